import sys

from asgi_operator.cli import main

sys.exit(main())
