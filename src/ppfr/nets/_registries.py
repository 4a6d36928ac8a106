from ppfr._registry import Registry

BACKBONES = Registry("backbone")
GENERATORS = Registry("generator")
HEADS = Registry("head")
