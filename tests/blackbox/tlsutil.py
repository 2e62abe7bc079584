"""Test certificates and TLS client helpers for the black-box tests.

Certificates are made by the test suite itself with the openssl command line
(a throwaway CA and leaf certificates per test session); nothing is shipped."""

import ctypes
import ctypes.util
import os
import socket
import ssl
import subprocess
import tempfile

import pytest


def _run(*args):
    subprocess.run(args, check=True, capture_output=True, timeout=60)


class CertDir:
    """A CA and leaf certificates signed by it, in a temporary directory."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="rmxcerts")
        self.ca_key = self.path("ca.key")
        self.ca = self.path("ca.pem")
        _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", self.ca_key, "-out", self.ca, "-subj", "/CN=ringmx test CA",
             "-days", "3", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def path(self, name):
        return os.path.join(self.dir, name)

    def leaf(self, name, rsa=False):
        """(cert, key) for host name `name`, signed by the CA."""
        key, csr, cert = self.path(name + ".key"), self.path(name + ".csr"), self.path(name + ".pem")
        if os.path.exists(cert):
            return cert, key
        newkey = ["-newkey", "rsa:2048"] if rsa else ["-newkey", "ec", "-pkeyopt",
                                                       "ec_paramgen_curve:P-256"]
        _run("openssl", "req", *newkey, "-nodes", "-keyout", key, "-out", csr, "-subj",
             "/CN=" + name)
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n" % name)
        _run("openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
             "-CAcreateserial", "-out", cert, "-days", "3", "-extfile", ext)
        return cert, key


@pytest.fixture(scope="session")
def certs():
    return CertDir()


def client_context(ca=None, min_version=None, max_version=None, verify=True,
                   check_hostname=True):
    """check_hostname=False for smtplib, which names the server by the
    address it connected to (127.0.0.1); the chain is still verified."""
    ctx = ssl.create_default_context(cafile=ca) if verify else ssl._create_unverified_context()
    if verify and not check_hostname:
        ctx.check_hostname = False
    if min_version:
        ctx.minimum_version = min_version
    if max_version:
        ctx.maximum_version = max_version
    return ctx


def peer_common_name(sslsock):
    cert = sslsock.getpeercert()
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return None


def recv_reply(sock, timeout=10.0):
    """One complete SMTP reply (all lines) from sock, as a list of str lines."""
    sock.settimeout(timeout)
    buf = b""
    lines = []
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed; got %r %r" % (lines, buf))
            buf += chunk
        line, buf = buf.split(b"\r\n", 1)
        lines.append(line.decode("utf-8", "replace"))
        if len(line) < 4 or line[3:4] == b" ":
            if buf:
                raise AssertionError("bytes after a complete reply: %r" % buf)
            return lines


TLS1_3_VERSION = 0x0304


def libssl():
    """OpenSSL's libssl through ctypes, for what Python's ssl module has no
    call for (SSL_key_update, a one-way SSL_shutdown); skips if absent."""
    name = ctypes.util.find_library("ssl")
    if not name:
        pytest.skip("libssl not found for ctypes")
    lib = ctypes.CDLL(name)
    for fn, args, res in (("SSL_key_update", [ctypes.c_void_p, ctypes.c_int], ctypes.c_int),
                          ("SSL_do_handshake", [ctypes.c_void_p], ctypes.c_int),
                          ("SSL_shutdown", [ctypes.c_void_p], ctypes.c_int),
                          ("SSL_get_error", [ctypes.c_void_p, ctypes.c_int], ctypes.c_int),
                          ("SSL_version", [ctypes.c_void_p], ctypes.c_int)):
        f = getattr(lib, fn)
        f.argtypes, f.restype = args, res
    return lib


def ssl_pointer(lib, t):
    """The SSL* of a TLS 1.3 ssl.SSLSocket: CPython's _ssl object is
    PyObject_HEAD, the socket's weak reference, then the SSL pointer."""
    p = ctypes.c_void_p.from_address(id(t._sslobj) + 3 * ctypes.sizeof(ctypes.c_void_p)).value
    if not p or lib.SSL_version(p) != TLS1_3_VERSION:
        pytest.skip("cannot find the OpenSSL SSL object of Python's socket")
    return p
