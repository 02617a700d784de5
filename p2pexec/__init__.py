from p2pexec.errors import *  # noqa
