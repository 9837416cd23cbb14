from mlic.cli import main

raise SystemExit(main())
