"""Wire layer: captures -> packets -> TCP streams -> ONC RPC -> Gluster events."""
