"""Golden images as files, before the helper stores them: building one from Debian's packages
(`bootbroker images build`) and checking a site's own image before it is published (`images check`).

Run by the admin's CLI as root on the helper's host, never by the helper daemon or the broker.
"""
