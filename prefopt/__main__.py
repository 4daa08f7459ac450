from prefopt.cli import main

raise SystemExit(main())
