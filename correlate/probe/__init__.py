"""Process probes: bcc (or SystemTap) on libgfapi, Samba, FUSE and OpenSSL, read as timed
events. The catalog says what is attached; the sessions run it and turn records into events."""
