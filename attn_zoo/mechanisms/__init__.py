"""One file per mechanism, each registered by name with ``@register_mechanism``.

The registry imports every module of this package on first use, so a new mechanism is one new file.
"""
