"""``python -m onnxq`` runs the CLI."""

from onnxq.cli import main

raise SystemExit(main())
