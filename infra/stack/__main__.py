from infra.stack.cli import main

raise SystemExit(main())
