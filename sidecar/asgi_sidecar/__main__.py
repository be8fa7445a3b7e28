import sys

from asgi_sidecar.cli import main

sys.exit(main())
