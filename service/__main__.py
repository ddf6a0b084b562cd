"""`python -m service`: the command line (`service.runtime.cli`)."""

from service.runtime.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
