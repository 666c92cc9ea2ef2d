# Transitional: daemon/ and the plug-ins still import from here until their imports move to
# the package (dragd.protocol); this file is deleted then.
from . import *  # noqa: F401,F403
