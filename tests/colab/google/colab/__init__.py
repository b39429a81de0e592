"""A stand-in for Colab's `google.colab` package, for rehearsing the course outside Colab.

Only what the lessons touch: `drive.mount`. It maps the mount point to the folder named by
`$COLAB_REHEARSAL_DRIVE` (a temporary directory of the rehearsal), through a symbolic link.
No `google/__init__.py`: `google` stays a namespace package, so `google.protobuf` and friends still import.
"""
from . import drive
