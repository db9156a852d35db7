from tatl.cli import main

raise SystemExit(main())
