"""Fabric tasks run from the laptop: `fab --list` shows them.

The tasks live in `pynet/tasks/`; this file only gathers them so `fab` finds them.
"""

from pynet.tasks.access import *  # noqa: F403
from pynet.tasks.cloud import *  # noqa: F403
from pynet.tasks.cluster import *  # noqa: F403
from pynet.tasks.hostkey import *  # noqa: F403
from pynet.tasks.release import *  # noqa: F403
