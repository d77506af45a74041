from autoft.cli import main

raise SystemExit(main())
