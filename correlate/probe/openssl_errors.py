"""OpenSSL's own words for an error the tls probe caught: ERR_LIB_*/reason pairs and
X509_V_ERR_* codes, from this host's libcrypto (the one the probed processes load), with a
short table of the handshake failures Gluster meets when it cannot be loaded."""
from __future__ import annotations

import ctypes
import functools

LIB_SSL = 20
FALLBACK = {(LIB_SSL, 134): "certificate verify failed",
            (LIB_SSL, 267): "wrong version number",
            (LIB_SSL, 294): "unexpected eof while reading",
            (LIB_SSL, 1042): "sslv3 alert bad certificate",
            (LIB_SSL, 1045): "sslv3 alert certificate expired",
            (LIB_SSL, 1046): "sslv3 alert certificate unknown",
            (LIB_SSL, 1048): "tlsv1 alert unknown ca"}
VERIFY_FALLBACK = {2: "unable to get issuer certificate", 9: "certificate is not yet valid",
                   10: "certificate has expired", 18: "self-signed certificate",
                   19: "self-signed certificate in certificate chain",
                   20: "unable to get local issuer certificate",
                   21: "unable to verify the first certificate"}
# X509_V_ERR_* of a certificate outside its validity, and of one no trusted CA signed
VERIFY_DATES = {9, 10}
VERIFY_CA = {2, 18, 19, 20, 21}


@functools.cache
def _libcrypto():
    try:
        ssl = ctypes.CDLL("libssl.so.3")
        crypto = ctypes.CDLL("libcrypto.so.3")
        ssl.OPENSSL_init_ssl.argtypes = [ctypes.c_uint64, ctypes.c_void_p]
        ssl.OPENSSL_init_ssl(0x00200000 | 0x2, None)   # load the SSL and crypto error strings
        crypto.ERR_reason_error_string.restype = ctypes.c_char_p
        crypto.ERR_reason_error_string.argtypes = [ctypes.c_ulong]
        crypto.X509_verify_cert_error_string.restype = ctypes.c_char_p
        crypto.X509_verify_cert_error_string.argtypes = [ctypes.c_long]
        return crypto
    except (OSError, AttributeError):
        return None


def reason_text(lib: int, reason: int) -> str:
    """ERR_reason_error_string of OpenSSL 3's packed code (lib << 23 | reason)."""
    crypto = _libcrypto()
    text = crypto.ERR_reason_error_string(((lib & 0xFF) << 23) | (reason & 0x7FFFFF)) \
        if crypto else None
    if text:
        return text.decode("ascii", "replace")
    return FALLBACK.get((lib, reason), f"OpenSSL error lib {lib} reason {reason}")


def verify_text(code: int) -> str:
    crypto = _libcrypto()
    text = crypto.X509_verify_cert_error_string(code) if crypto else None
    if text:
        return text.decode("ascii", "replace")
    return VERIFY_FALLBACK.get(code, f"X509 verify error {code}")
