"""Demo: the guide's five MCP tables, bulk test data, and a live application workload."""
