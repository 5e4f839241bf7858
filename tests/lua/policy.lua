-- miltertest (Debian's, from OpenDKIM) against tests.milterhandlers.PolicyMilter
-- served by esmtpkit's milter face on 127.0.0.1:port (-D port=N).

local function check(condition, what)
    if not condition then
        error("FAILED: " .. what)
    end
    mt.echo("ok: " .. what)
end

mt.set_timeout(5)
local conn = mt.connect("inet:" .. port .. "@127.0.0.1", 40, 0.25)
check(conn ~= nil, "connected")
check(mt.negotiate(conn, nil, nil, nil) == nil, "negotiated")
check(mt.test_action(conn, SMFIF_ADDHDRS), "asked to add headers")
check(mt.test_action(conn, SMFIF_CHGBODY), "asked to replace the body")
check(mt.test_option(conn, SMFIP_HDR_LEADSPC), "asked for leading spaces")

check(mt.conninfo(conn, "client.example", "192.0.2.10") == nil, "conninfo")
check(mt.helo(conn, "client.example") == nil, "helo")
check(mt.mailfrom(conn, "<alice@sender.test>") == nil, "mail")

check(mt.rcptto(conn, "<nobody@example.org>") == nil, "rcpt refused sent")
check(mt.getreply(conn) == SMFIR_REPLYCODE, "rcpt refused with a reply code")
check(mt.rcptto(conn, "<bob@example.org>") == nil, "rcpt")
check(mt.getreply(conn) == SMFIR_CONTINUE, "rcpt continues")
check(mt.rcptto(conn, "<dave@example.org>") == nil, "rcpt dave")

check(mt.data(conn) == nil, "data")
check(mt.getreply(conn) == SMFIR_CONTINUE, "data continues")
check(mt.header(conn, "From", " Alice <alice@sender.test>") == nil, "header From")
check(mt.test_option(conn, SMFIP_NR_HDR), "headers not answered")
check(mt.header(conn, "Subject", " hello") == nil, "header Subject")
-- The handler has neither EOH nor BODY: the milter asked not to get them.
check(mt.test_option(conn, SMFIP_NOEOH), "no EOH asked for")
check(mt.test_option(conn, SMFIP_NOBODY), "no BODY asked for")
check(mt.eom(conn) == nil, "eom")
check(mt.getreply(conn) == SMFIR_ACCEPT, "eom accepted")
check(mt.eom_check(conn, MT_HDRADD, "X-Milter"), "header added")
check(mt.eom_check(conn, MT_HDRINSERT, "X-Milter-Top"), "header inserted")
check(mt.eom_check(conn, MT_HDRCHANGE, "Subject"), "Subject changed")
check(mt.eom_check(conn, MT_BODYCHANGE), "body replaced")
check(mt.eom_check(conn, MT_RCPTADD, "<carol@example.org>"), "recipient added")
check(mt.eom_check(conn, MT_RCPTDELETE, "<dave@example.org>"), "recipient deleted")

-- A second message on the same connection: refused at HEADER.
check(mt.mailfrom(conn, "<alice@sender.test>") == nil, "second mail")
check(mt.rcptto(conn, "<bob@example.org>") == nil, "second rcpt")
check(mt.header(conn, "Subject", " a forbidden word") == nil, "forbidden Subject")
check(mt.eom(conn) == nil, "second eom")
check(mt.getreply(conn) == SMFIR_REPLYCODE, "Subject refused with a reply code")
check(not mt.eom_check(conn, MT_HDRADD), "nothing added to the refused message")

-- A third one, tempfailed at DATA for its sender, then aborted.
check(mt.abort(conn) == nil, "abort")
check(mt.mailfrom(conn, "<busy@sender.test>") == nil, "busy mail")
check(mt.rcptto(conn, "<bob@example.org>") == nil, "busy rcpt")
check(mt.data(conn) == nil, "busy data")
check(mt.getreply(conn) == SMFIR_REPLYCODE, "busy sender tempfailed at DATA")

check(mt.disconnect(conn) == nil, "disconnected")
mt.echo("all passed")
