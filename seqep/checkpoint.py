"""Moved to `seqep.training.checkpoint`; this name stays so that scripts written against the earlier scripting API
(`from seqep.checkpoint import load_weights`) keep working."""

from seqep.training.checkpoint import *  # noqa: F401,F403
from seqep.training.checkpoint import load_weights, read_checkpoint  # noqa: F401  (the names scripts used)
