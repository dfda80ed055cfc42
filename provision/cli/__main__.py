from provision.cli.root import main

raise SystemExit(main())
