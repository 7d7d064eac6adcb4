from __future__ import annotations

from ondemand.cli import main

if __name__ == "__main__":
    main()
