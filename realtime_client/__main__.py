"""`python -m realtime_client tail ...`: see realtime_client/tail.py."""

from __future__ import annotations

import sys

from realtime_client.tail import main

sys.exit(main())
