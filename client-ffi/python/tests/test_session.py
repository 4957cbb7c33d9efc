"""The Python SDK against a real ternd: accounts, messages, receipts, groups, media, errors,
a server restart, and event order. Each test says what it proves."""

from __future__ import annotations

import os

import pytest

import tern
from conftest import (
    PASSWORD,
    async_test,
    is_message,
    messages,
    next_matching,
    options,
)


def is_connected(event) -> bool:
    return isinstance(event, tern.SessionEvent.CONNECTED)


async def direct(a: tern.Session, b: tern.Session) -> int:
    """The direct conversation of two sessions' users."""
    other = await a.lookup_user(b.account().username)
    assert other.user_id == b.account().user_id
    return (await a.open_direct(other.user_id)).conversation_id


# Proves register creates an account and a device, login adds a second device of the same user,
# and a stored session resumes without credentials.
@async_test
async def test_register_login_and_resume(people):
    alice = await people.register("alice")
    account = alice.account()
    assert account.username == "alice"
    assert account.user_id > 0 and account.device_id > 0
    first = await next_matching(alice, is_connected)
    assert first.resumed is False

    laptop = await people.start(
        tern.Credentials.LOGIN(username="alice", password=PASSWORD, device_name="laptop"),
        "alice-laptop.json",
    )
    assert laptop.account().user_id == account.user_id
    assert laptop.account().device_id != account.device_id
    devices = await laptop.list_devices()
    assert sorted(d.device_id for d in devices) == sorted(
        [account.device_id, laptop.account().device_id]
    )
    assert [d.current for d in devices if d.device_id == laptop.account().device_id] == [True]

    await alice.stop()
    resumed = await people.start(tern.Credentials.STORED(), "alice.json")
    assert resumed.account() == account
    again = await next_matching(resumed, is_connected)
    assert again.resumed is True


# Proves a message sent by one session reaches the other, with its sender, body and sequence
# number, and that the sender's own session sees it too.
@async_test
async def test_send_and_receive(people):
    alice = await people.register("alice")
    bob = await people.register("bob")
    conversation = await direct(alice, bob)

    sent = await alice.send(conversation, "hello Bob")
    assert sent.conversation_id == conversation and sent.seq == 1
    assert len(sent.client_msg_id) == 32

    [got] = await messages(bob, 1)
    assert got.body == "hello Bob"
    assert got.sender == alice.account().user_id
    assert got.seq == sent.seq and got.message_id == sent.message_id
    assert got.client_msg_id == sent.client_msg_id

    [own] = await messages(alice, 1)
    assert own.message_id == sent.message_id

    page = await bob.history(conversation, 0, 0)
    assert [m.body for m in page.messages] == ["hello Bob"]


# Proves marking a message read sends the sender a read receipt naming the reader and the seq.
@async_test
async def test_read_receipt(people):
    alice = await people.register("alice")
    bob = await people.register("bob")
    conversation = await direct(alice, bob)
    sent = await alice.send(conversation, "did you read this?")
    [got] = await messages(bob, 1)

    await bob.mark_read(conversation, got.seq)

    def is_read_receipt(event) -> bool:
        return (
            isinstance(event, tern.SessionEvent.UPDATE)
            and isinstance(event.kind, tern.UpdateKind.RECEIPT)
            and event.kind.kind == tern.ReceiptKind.READ
        )

    receipt = (await next_matching(alice, is_read_receipt)).kind
    assert receipt.conversation_id == conversation
    assert receipt.user_id == bob.account().user_id
    assert receipt.up_to_seq >= sent.seq
    info = await bob.get_conversation(conversation)
    assert info.read_seq == sent.seq and info.unread == 0


# Proves a group of three: every member learns of it, sees every member's messages, and sees
# its rename; the owner is the creator.
@async_test
async def test_group_of_three(people):
    alice = await people.register("alice")
    bob = await people.register("bob")
    carol = await people.register("carol")
    ids = [s.account().user_id for s in (alice, bob, carol)]

    group = await alice.create_group("trio", ids[1:])
    assert group.kind == tern.ConversationKind.GROUP
    assert sorted(m.user_id for m in group.members) == sorted(ids)
    assert [m.role for m in group.members if m.user_id == ids[0]] == [tern.Role.OWNER]

    for member in (bob, carol):
        created = await next_matching(
            member,
            lambda e: isinstance(e, tern.SessionEvent.UPDATE)
            and isinstance(e.kind, tern.UpdateKind.GROUP_CREATED),
        )
        assert created.kind.conversation_id == group.conversation_id
        assert created.kind.name == "trio"

    await alice.send(group.conversation_id, "hi both")
    await carol.send(group.conversation_id, "hi Alice")
    for member in (alice, bob, carol):
        got = await messages(member, 2)
        assert [(m.body, m.sender) for m in got] == [("hi both", ids[0]), ("hi Alice", ids[2])]
        assert [m.seq for m in got] == [1, 2]

    await bob.rename_group(group.conversation_id, "the three")
    renamed = await next_matching(
        carol,
        lambda e: isinstance(e, tern.SessionEvent.UPDATE)
        and isinstance(e.kind, tern.UpdateKind.GROUP_RENAMED),
    )
    assert renamed.kind.name == "the three" and renamed.kind.actor == ids[1]


# Proves the conversation list, presence and typing helpers: the list shows the direct chat with
# its peer and newest message, a follower sees the other user online and then offline once their
# session stops, and a typing notice reaches the other member.
@async_test
async def test_conversations_presence_and_typing(people):
    alice = await people.register("alice")
    bob = await people.register("bob")
    conversation = await direct(alice, bob)
    await alice.send(conversation, "newest")

    page = await bob.list_conversations(0, 0)
    [summary] = page.conversations
    assert summary.conversation_id == conversation and not page.has_more
    assert summary.peer == alice.account().user_id
    assert summary.last_message is not None and summary.last_message.body == "newest"

    [now] = await bob.subscribe_presence([alice.account().user_id])
    assert now.user_id == alice.account().user_id and now.online

    await alice.typing(conversation, True)
    typing = await next_matching(bob, lambda e: isinstance(e, tern.SessionEvent.TYPING))
    assert (typing.conversation_id, typing.user_id, typing.active) == (
        conversation,
        alice.account().user_id,
        True,
    )

    await alice.stop()
    offline = await next_matching(
        bob,
        lambda e: isinstance(e, tern.SessionEvent.PRESENCE_CHANGED) and not e.presence.online,
    )
    assert offline.presence.user_id == alice.account().user_id


class Recorder(tern.TransferProgress):
    """Keeps every progress report."""

    def __init__(self):
        self.reports = []

    def on_progress(self, done_bytes: int, total_bytes: int) -> None:
        self.reports.append((done_bytes, total_bytes))


def check_progress(reports, total: int) -> None:
    assert len(reports) >= 3, reports
    assert reports[0] == (0, total)
    assert reports[-1] == (total, total)
    done = [d for d, _ in reports]
    assert done == sorted(done) and all(t == total for _, t in reports)


# Proves a media round trip: an upload in several chunks reports its progress, the media rides
# on a message, and the other member downloads the same bytes, with progress, through both the
# plain callback interface and the asyncio helper; the file variants round-trip too.
@async_test
async def test_media_round_trip_with_progress(people, tmp_path):
    alice = await people.register("alice")
    bob = await people.register("bob")
    conversation = await direct(alice, bob)
    data = os.urandom(600 * 1024 + 123)

    upload_progress = Recorder()
    info = await alice.upload(data, "application/octet-stream", upload_progress)
    assert info.size == len(data) and info.complete
    assert len(info.sha256) == 64
    check_progress(upload_progress.reports, len(data))

    await alice.send_with_attachments(conversation, "a file", [info.media_id])
    [got] = await messages(bob, 1)
    assert [(a.media_id, a.size) for a in got.attachments] == [(info.media_id, len(data))]

    reports = []
    on_loop = tern.progress(lambda done, total: reports.append((done, total)))
    downloaded = await bob.download(info.media_id, on_loop)
    assert downloaded == data
    check_progress(reports, len(data))

    # The file variants: from a file and back into one.
    source = tmp_path / "photo.bin"
    source.write_bytes(data[:1000])
    from_file = await alice.upload_file(str(source), "image/jpeg", None)
    assert (from_file.size, from_file.mime) == (1000, "image/jpeg")
    target = tmp_path / "copy.bin"
    await alice.download_file(from_file.media_id, str(target), None)
    assert target.read_bytes() == data[:1000]


# Proves errors arrive typed: a wrong password is ClientError.Server with BAD_CREDENTIALS, a
# conversation the caller is not in is NOT_FOUND (its existence is not revealed), a member who
# is not an admin gets FORBIDDEN, and resuming with no stored session is a usage error.
@async_test
async def test_typed_errors(people):
    alice = await people.register("alice")
    bob = await people.register("bob")
    carol = await people.register("carol")
    conversation = await direct(alice, bob)

    with pytest.raises(tern.ClientError.Server) as wrong:
        await people.start(
            tern.Credentials.LOGIN(username="alice", password="not the password", device_name="x"),
            "intruder.json",
        )
    assert wrong.value.code == tern.ErrorCode.BAD_CREDENTIALS
    assert wrong.value.code_value == 12

    with pytest.raises(tern.ClientError.Server) as outsider:
        await carol.send(conversation, "let me in")
    assert outsider.value.code == tern.ErrorCode.NOT_FOUND
    with pytest.raises(tern.ClientError.Server) as reader:
        await carol.history(conversation, 0, 0)
    assert reader.value.code == tern.ErrorCode.NOT_FOUND

    group = await alice.create_group("club", [bob.account().user_id])
    with pytest.raises(tern.ClientError.Server) as member:
        await bob.add_members(group.conversation_id, [carol.account().user_id])
    assert member.value.code == tern.ErrorCode.FORBIDDEN

    with pytest.raises(tern.ClientError.Usage):
        await people.start(tern.Credentials.STORED(), "nobody.json")
    assert isinstance(wrong.value, tern.ClientError)


# Proves a session survives the server being killed mid-conversation and started again on the
# same data and port: it reconnects by itself, sends queued while the server was down go out once,
# and the receiver gets every message exactly once, in order.
@async_test
async def test_server_restart_loses_and_doubles_nothing(people, server):
    alice = await people.register("alice")
    bob = await people.register("bob")
    conversation = await direct(alice, bob)
    bodies = [f"message {i}" for i in range(9)]

    for body in bodies[:3]:
        await alice.send(conversation, body)
    assert [m.body for m in await messages(bob, 3)] == bodies[:3]

    server.kill()
    await next_matching(alice, lambda e: isinstance(e, tern.SessionEvent.DISCONNECTED))
    queued = [alice.queue_send(conversation, body) for body in bodies[3:6]]
    assert alice.outbox_len() == 3
    server.restart()

    sent = []
    while len(sent) < 3:
        event = await next_matching(alice, lambda e: isinstance(e, tern.SessionEvent.SENT))
        sent.append(event.sent)
    # Confirmations may come in any order; the messages were stored in the order queued.
    assert [s.client_msg_id for s in sorted(sent, key=lambda s: s.seq)] == queued
    assert [s.seq for s in sorted(sent, key=lambda s: s.seq)] == [4, 5, 6]
    assert alice.outbox_len() == 0
    for body in bodies[6:]:
        await alice.send(conversation, body)

    got = await messages(bob, 6)
    assert [m.body for m in got] == bodies[3:]
    page = await bob.history(conversation, 0, 0)
    assert [m.body for m in page.messages] == bodies
    assert [m.seq for m in page.messages] == list(range(1, 10))
    assert len({m.message_id for m in page.messages}) == 9
    # Nothing more arrives: no message was stored or delivered twice.
    extra = await bob.next_event_within(500)
    assert extra is None or not is_message(extra), extra


# Proves events arrive in order: a burst of queued sends reaches the receiver with gapless
# user_seq and seq, bodies in the order sent, and every send is confirmed with the seq of its
# place in the queue.
@async_test
async def test_events_arrive_in_order(people):
    alice = await people.register("alice")
    bob = await people.register("bob")
    conversation = await direct(alice, bob)
    count = 40
    keys = [alice.queue_send(conversation, f"#{i}") for i in range(count)]

    updates = []
    while len(updates) < count:
        event = await next_matching(bob, is_message)
        updates.append(event)
    assert [u.kind.message.body for u in updates] == [f"#{i}" for i in range(count)]
    assert [u.kind.message.seq for u in updates] == list(range(1, count + 1))
    seqs = [u.user_seq for u in updates]
    assert seqs == list(range(seqs[0], seqs[0] + count))

    confirmed = []
    async for event in tern.events(alice, timeout_ms=10_000):
        if isinstance(event, tern.SessionEvent.SENT):
            confirmed.append(event.sent)
            if len(confirmed) == count:
                break
    # Replies to pipelined sends may be confirmed in any order; what the server stored is in
    # the order queued.
    by_seq = sorted(confirmed, key=lambda s: s.seq)
    assert [s.client_msg_id for s in by_seq] == keys
    assert [s.seq for s in by_seq] == list(range(1, count + 1))


# Proves TLS options: a session connects over TLS trusting the server's self-signed certificate
# from its PEM file, and fails with an I/O error when it trusts nothing but the web roots.
@async_test
async def test_tls(tls_server, tmp_path):
    from conftest import People

    crowd = People(tls_server, tmp_path)
    pem = str(tls_server.data_dir / "tls" / "self-signed.pem")
    trusted = options()
    trusted.tls = tern.TlsOptions(server_name="127.0.0.1", root_pem_files=[pem], web_roots=False)
    credentials = tern.Credentials.REGISTER(username="tess", password=PASSWORD, device_name="tls")
    try:
        tess = await crowd.start(credentials, "tess.json", trusted, tls_server.listening["tls"])
        assert tess.account().username == "tess"
        untrusted = options()
        untrusted.tls = tern.TlsOptions(server_name="127.0.0.1")
        with pytest.raises(tern.ClientError.Io):
            await crowd.start(credentials, "other.json", untrusted, tls_server.listening["tls"])
    finally:
        await crowd.stop_all()
