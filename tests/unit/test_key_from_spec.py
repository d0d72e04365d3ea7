"""`--key-from TABLE.COLUMN` is read as SQL reads names: quotes kept together, unquoted names folded."""

from __future__ import annotations

import pytest

from online_uuid.errors import PlanError
from online_uuid.plan import split_key_from


def test_key_from_splits_at_the_last_unquoted_dot() -> None:
    assert split_key_from("customer.public_id") == ("customer", "public_id")
    assert split_key_from("Shop.Customer.Public_ID") == ("Shop.Customer", "public_id")  # folded, as SQL does
    assert split_key_from('"a.b"."c.d"."Public ""Id"""') == ('"a.b"."c.d"', 'Public "Id"')
    for bad in ("public_id", ".x", "t.", '"t.x'):
        with pytest.raises(PlanError, match=r"TABLE\.COLUMN"):
            split_key_from(bad)
