"""The head-end: keeps in touch with every meter, reads it on schedule, delivers commands exactly once.

``model`` is the protocol-independent vocabulary every transport implements.
"""
