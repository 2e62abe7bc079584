"""Orderly shutdown: SIGTERM/SIGINT stop accepting, abort sessions with 421 (or
close), flush the spool and exit 0; acknowledged mail survives the restart and
an unfinished DATA is never committed."""

import signal
import socket
import time

from conftest import SMTPClient, queued_id, strip_received, wait_for


def _wait_exit(server, sig):
    rc = server.stop(sig)
    assert rc == 0, "ringmx exited %r on signal %d:\n%s" % (rc, sig, server.log_tail())


def _refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


def _port_closed(port):
    """The port refuses connections (within a short deadline: the kernel tears
    an exited process's io_uring down asynchronously, and a listener held by
    it may accept for a moment after exit)."""
    try:
        wait_for(lambda: _refused(port), 5, "port %d to refuse connections" % port)
    except AssertionError:
        return False
    return True


def _final_replies(c):
    """Replies sent before the server closed; a reset counts as closed."""
    try:
        return c.replies_until_closed(15)
    except OSError:
        return []


def test_sigterm_mid_data(server):
    body = b"Subject: acked\r\n\r\nbefore the signal\r\n"
    c = SMTPClient(server.port)
    qid = queued_id(c.send_message(body))
    c.start_mail(ehlo=False)
    assert c.cmd("DATA").code == 354
    c.send(b"Subject: unfinished\r\n\r\nhalf a message")
    server.stop(signal.SIGTERM)
    rc = server.exit_codes[-1][1]
    rs = _final_replies(c)
    c.close()
    assert rc == 0, "exit %r on SIGTERM mid-DATA:\n%s" % (rc, server.log_tail())
    assert all(r.code == 421 for r in rs), "replies to an aborted DATA: %r" % rs
    if rs:
        assert rs[0].startswith("421 4.3.2"), rs
    assert _port_closed(server.port), "still accepting after exit"
    server.start()
    listed = server.queue_list()
    assert qid in listed, "acknowledged message lost across SIGTERM"
    assert list(listed) == [qid], "an unfinished DATA was committed: %r" % listed
    env, msg = server.queue_show(qid)
    assert strip_received(msg)[1] == body


def test_sigterm_idle_session_gets_421(server):
    c = SMTPClient(server.port)
    c.ehlo()
    server.stop(signal.SIGTERM)
    rc = server.exit_codes[-1][1]
    rs = _final_replies(c)
    c.close()
    assert rc == 0, server.log_tail()
    assert all(r.code == 421 for r in rs), rs
    if rs:
        assert rs[0].startswith("421 4.3.2"), rs


def test_sigint_clean_exit(server):
    c = SMTPClient(server.port)
    qid = queued_id(c.send_message(b"Subject: int\r\n\r\nx\r\n"))
    c.close()
    _wait_exit(server, signal.SIGINT)
    server.start()
    assert qid in server.queue_list()


def test_sigterm_with_no_clients(server):
    t0 = time.monotonic()
    _wait_exit(server, signal.SIGTERM)
    assert time.monotonic() - t0 < 10
    assert _port_closed(server.port)


def test_restart_many_times_keeps_queue(server):
    ids = []
    for i in range(3):
        c = SMTPClient(server.port)
        ids.append(queued_id(c.send_message(b"Subject: %d\r\n\r\nround %d\r\n" % (i, i))))
        c.close()
        server.restart()
        assert set(server.queue_list()) == set(ids)


def _bindable(port):
    """What a new ringmx's start-up probe does: bind the address without
    SO_REUSEPORT.  It fails while any socket still listens there."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_address_free_once_exited_so_a_restart_starts(server):
    # An accept left in a shard's ring kept the listening socket alive after
    # exit, until the kernel tore the ring down: a restart at once then
    # refused to start ("address already in use").  Many rounds: whether the
    # teardown had run by the time the next process probed varied.
    for i in range(20):
        _wait_exit(server, signal.SIGTERM if i % 2 else signal.SIGINT)
        assert _bindable(server.port), "round %d: the address is still held after exit" % i
        server.start()
