"""`python -m service tail`: the Python client's tail (realtime_client/tail.py), under the
service's command line."""

from __future__ import annotations

from realtime_client.tail import add_arguments, tail
from service.core.schema import FINAL_CLOSE_CODES

# Close codes after which it exits instead of reconnecting: the schema's client policy, as in web/.
FINAL_CODES = FINAL_CLOSE_CODES

__all__ = ["FINAL_CODES", "add_arguments", "tail"]
