"""spark-submit entry point: ``spark-submit batch/submit.py <job> [args]`` (see ``batch.__main__``)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from batch.__main__ import main  # noqa: E402

sys.exit(main())
