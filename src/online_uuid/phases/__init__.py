"""One module per phase: start (expand), cutover (prepare + swap), rollback, finalize."""
