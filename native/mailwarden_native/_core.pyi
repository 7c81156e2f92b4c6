# Typing for the cffi-generated extension.  cffi objects are dynamic, so
# the binding code in this package is where types are pinned down.
from typing import Any

ffi: Any
lib: Any
