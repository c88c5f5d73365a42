"""Golden images as files: building one from Debian's packages (`bootbroker images build`), checking a
site's own image before it is published (`images check`), and finding a version's own kernel and initrd
(`bootfiles`, which the helper runs at publish for netroot). `disk` reads a raw disk image in place for
the last two.

Build and check are run by the admin's CLI as root on the helper's host; only `disk` and `bootfiles` are
run by the helper daemon, never anything here by the broker.
"""
