"""The glusterd programs seen on port 24007 besides Handshake and Portmap: peer management,
cluster transactions, the CLI, brick operations and the op-version handshake.

Only procedure names are declared. Numbers: protocol-common.h (GD_MGMT_PROGRAM, GD_FRIEND_...,
GLUSTER_CLI_..., GD_BRICK_..., GD_MGMT_HNDSK_...) and the enums there, checked against the
actor tables of Gluster 10 (glusterd.so, glusterfsd): the CLI enum there has no DETACH_TIER.
"""
from __future__ import annotations

from .programs_base import Program, names_only

MGMT_V2 = ["NULL", "CLUSTER_LOCK", "CLUSTER_UNLOCK", "STAGE_OP", "COMMIT_OP"]
MGMT_V3 = ["NULL", "LOCK", "PRE_VALIDATE", "BRICK_OP", "COMMIT", "POST_VALIDATE", "UNLOCK",
           "POST_COMMIT"]
FRIEND = ["NULL", "PROBE_QUERY", "FRIEND_ADD", "FRIEND_REMOVE", "FRIEND_UPDATE"]
CLI = [
    "NULL", "PROBE", "DEPROBE", "LIST_FRIENDS", "CREATE_VOLUME", "GET_VOLUME", "GET_NEXT_VOLUME",
    "DELETE_VOLUME", "START_VOLUME", "STOP_VOLUME", "RENAME_VOLUME", "DEFRAG_VOLUME",
    "SET_VOLUME", "ADD_BRICK", "REMOVE_BRICK", "REPLACE_BRICK", "LOG_ROTATE", "GETSPEC",
    "PMAP_PORTBYBRICK", "SYNC_VOLUME", "RESET_VOLUME", "FSM_LOG", "GSYNC_SET", "PROFILE_VOLUME",
    "QUOTA", "TOP_VOLUME", "GETWD", "STATUS_VOLUME", "STATUS_ALL", "MOUNT", "UMOUNT",
    "HEAL_VOLUME", "STATEDUMP_VOLUME", "LIST_VOLUME", "CLRLOCKS_VOLUME", "UUID_RESET", "UUID_GET",
    "COPY_FILE", "SYS_EXEC", "SNAP", "BARRIER_VOLUME", "GET_VOL_OPT", "GANESHA", "BITROT",
    "ATTACH_TIER", "TIER", "GET_STATE", "RESET_BRICK", "REMOVE_TIER_BRICK", "ADD_TIER_BRICK",
]
BRICK = ["NULL", "TERMINATE", "XLATOR_INFO", "XLATOR_OP", "STATUS", "OP", "XLATOR_DEFRAG",
         "NODE_PROFILE", "NODE_STATUS", "VOLUME_BARRIER_OP", "BRICK_BARRIER", "NODE_BITROT",
         "BRICK_ATTACH", "DUMP_METRICS", "SVC_ATTACH", "SVC_DETACH"]
MGMT_HNDSK = ["NULL", "VERSIONS", "VERSIONS_ACK"]
AGGREGATOR = ["NULL", "LOOKUP", "GETLIMIT"]

GLUSTERD_PROGRAMS = [
    Program(1238433, "GlusterD svc mgmt", {2: names_only(MGMT_V2), 3: names_only(MGMT_V3)}),
    Program(1238437, "GlusterD svc peer", {2: names_only(FRIEND)}),
    Program(1238463, "GlusterD svc cli", {2: names_only(CLI)}),
    Program(4867634, "GlusterD brick operations", {2: names_only(BRICK)}),
    Program(1239873, "GlusterD MGMT Handshake", {1: names_only(MGMT_HNDSK)}),
    Program(29852134, "Quotad aggregator", {1: names_only(AGGREGATOR)}),
]
