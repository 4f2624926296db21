"""The delivery queue: owed messages sent to their providers, retried with backoff, within each provider's
rate limit, and held back while a provider's circuit is open."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import smtplib
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import formataddr, formatdate, parseaddr

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry, Counter

from services.notify import webhook
from services.notify.guard import CircuitBreaker, TokenBucket
from services.notify.links import LinkSigner, Purpose
from services.notify.messages import CHANNELS, WEBHOOK, render
from services.notify.settings import NotifySettings
from shared.crypto import Keyring, SealError
from shared.db import Connection, columns

log = logging.getLogger(__name__)
SCHEMA = "notify"
BATCH = 50


SMTP_IDLE_CHECK_SECONDS = 10.0
# Delivery rounds: one that handled this many goes straight on to the next; a smaller one lets work gather
# until this long after it started.
FULL_ROUND = 100
ROUND_SECONDS = 0.05

# A provider's round takes up to $3 of its channel's ($2) oldest messages due by $1 and marks them as being
# sent. The index on (channel, next_attempt_at) hands over exactly those, whatever waits on other channels.
CLAIM_FOR_UNITS = (
    f"UPDATE {SCHEMA}.deliveries d SET status = 'sending', attempts = attempts + 1 "
    "WHERE (d.dossier_code, d.event_id, d.channel) IN (SELECT dossier_code, event_id, channel "
    f"FROM {SCHEMA}.deliveries q WHERE channel = $2 AND status IN ('queued', 'temporary-failure') "
    "AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) "
    "RETURNING d.dossier_code, d.event_id, d.channel, d.template, d.attempts, d.context"
)
"""The webhook channel's round: to a unit's system, not a citizen, so no contact to open, no opt-out."""
CLAIM_FOR_CITIZENS = (
    f"UPDATE {SCHEMA}.deliveries d SET status = 'sending', attempts = attempts + 1 "
    f"FROM {SCHEMA}.contacts c WHERE c.dossier_code = d.dossier_code AND (d.dossier_code, d.event_id, "
    f"d.channel) IN (SELECT dossier_code, event_id, channel FROM {SCHEMA}.deliveries q "
    "WHERE channel = $2 AND status IN ('queued', 'temporary-failure') AND next_attempt_at <= $1 "
    f"AND (required OR NOT EXISTS (SELECT 1 FROM {SCHEMA}.opt_outs o WHERE o.dossier_code = q.dossier_code)) "
    "ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) "
    "RETURNING d.dossier_code, d.event_id, d.channel, d.template, d.attempts, d.context, c.sealed"
)
"""A citizen channel's round, with the contact to send to; optional messages to one who opted out stay."""
SET_ASIDE_OPTED_OUT = (
    f"UPDATE {SCHEMA}.deliveries d SET status = 'opted-out' FROM {SCHEMA}.opt_outs o "
    "WHERE o.dossier_code = d.dossier_code AND NOT d.required "
    "AND d.status IN ('queued', 'temporary-failure') RETURNING d.channel"
)
"""Optional messages waiting for citizens who opted out, recorded as such (the rounds already skip them)."""


async def queue_owed(conn: Connection, owed: list[tuple[str, str, str, str, str, bool]], now: datetime) -> None:
    """Queue owed messages, (dossier, event id, channel, template, context JSON, required) each, due now. One
    statement for them all, so the counting triggers run once; a message already queued stays as it is."""
    if owed:
        await conn.execute(
            f"INSERT INTO {SCHEMA}.deliveries (dossier_code, event_id, channel, template, status, "
            "next_attempt_at, context, created_at, required) "
            "SELECT code, event_id, channel, template, 'queued', $7, context::jsonb, $7, required "
            "FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[]) "
            "AS t(code, event_id, channel, template, context, required) ON CONFLICT DO NOTHING",
            *columns(owed), now)


ENCODED_WORD_BYTES = 45
"""UTF-8 bytes per RFC 2047 encoded word: 60 base64 characters, within the 75 an encoded word may take."""


def mail(sender: str, to: str, subject: str, body: str, message_id: str) -> bytes:
    """The email as it goes over SMTP: headers as RFC 2047 encoded words, the body base64, CRLF line ends, so
    any relay carries it and any reader shows it exactly; ASCII only unless the citizen's address is not (that
    one goes as UTF-8, for a relay that takes SMTPUTF8). Written out here rather than through the `email`
    package, which spent about 0.2 ms folding and flattening each Vietnamese message (most of building one)."""
    name, address = parseaddr(sender)
    if any("\r" in value or "\n" in value for value in (address, to, message_id)) or not (
            address.isascii() and message_id.isascii()):
        raise ValueError("an address or Message-ID that cannot go in a header as it is")
    sender_field = formataddr((name, address)) if name.isascii() else f"{_encoded_words(name)} <{address}>"
    head = (
        'Content-Type: text/plain; charset="utf-8"\r\n'
        "MIME-Version: 1.0\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        f"From: {sender_field}\r\n"
        f"To: {to}\r\n"
        f"Subject: {_encoded_words(subject) if not subject.isascii() else ' '.join(subject.split())}\r\n"
        f"Message-ID: {message_id}\r\n\r\n"
    )
    return head.encode() + base64.encodebytes(body.encode()).replace(b"\n", b"\r\n")


def _encoded_words(text: str) -> str:
    """`text` as UTF-8 base64 encoded words, one per folded line, none splitting a character's bytes."""
    raw = text.encode()
    words = []
    start = 0
    while start < len(raw):
        end = min(start + ENCODED_WORD_BYTES, len(raw))
        while end < len(raw) and raw[end] & 0xC0 == 0x80:  # a continuation byte: the character starts earlier
            end -= 1
        words.append(f"=?utf-8?b?{base64.b64encode(raw[start:end]).decode()}?=")
        start = end
    return "\r\n ".join(words)


def connections_needed(settings: NotifySettings) -> int:
    """Every sender of every channel may hold a database connection while its provider answers; a few more
    for taking lifecycle events in and for reads."""
    return 4 + (len(CHANNELS) + 1) * settings.senders_per_channel


class PermanentFailure(Exception):
    """A provider refused the message for good (bad number, unknown template): retrying will not help."""


class TemporaryFailure(Exception):
    """A provider could not take the message now (overloaded, down, too many requests): retried later."""

    def __init__(self, reason: str, *, rate_limited: bool = False) -> None:
        super().__init__(reason)
        self.rate_limited = rate_limited


def backoff(attempts: int, base: float = 2.0, ceiling: float = 600.0) -> timedelta:
    return timedelta(seconds=min(base * 2 ** max(attempts - 1, 0), ceiling))


CLAIM_EVERY_SECONDS = 0.5
"""While its rate limit holds a channel back, the channel is claimed from once this long of its rate has come
back (at most its burst), not for every token: a claim costs the database about as much for one message as for
fifty, and one claim per message was most of the database's work for sending at 10 a second. The messages still
go at the provider's rate; one arriving after such a backlog may wait up to this long more."""


class ProviderGuard:
    """One provider's rate limit and circuit breaker, on the monotonic clock."""

    def __init__(self, channel: str, settings: NotifySettings) -> None:
        self.channel = channel
        rate, burst = settings.rate_per_second.get(channel, 10.0), settings.rate_burst.get(channel, 10)
        self.bucket = TokenBucket(rate=rate, burst=burst)
        self.breaker = CircuitBreaker(threshold=settings.breaker_threshold,
                                      cool_down=settings.breaker_cool_down_seconds)
        self.gather = max(1, min(BATCH, burst, int(rate * CLAIM_EVERY_SECONDS)))
        self.held_back = False  # the last claim took all it asked for: more are likely waiting

    def room(self, now: float) -> int:
        """How many messages a claim may take now."""
        tokens = self.bucket.available(now)
        if self.held_back and tokens < self.gather:
            tokens = 0
        return min(tokens, self.breaker.allowed(now), BATCH)

    def claimed(self, asked: int, got: int) -> None:
        self.held_back = got >= asked

    def wait(self, now: float) -> float:
        """Seconds until a claim may take a message."""
        return max(self.bucket.wait(now, self.gather if self.held_back else 1), self.breaker.wait(now))


class Deliverer:
    """Sends owed messages. A row is marked `sending` (committed) before the send, so a crash mid-send is
    retried with the same Message-ID (or gateway idempotency key): providers drop the copy, nothing is lost.

    Each provider is worked on by its own task, so one slow or failing provider does not hold up the others,
    by `senders_per_channel` senders at once, so that a provider's answer time does not cap its channel."""

    def __init__(self, pool: asyncpg.Pool, settings: NotifySettings, keyring: Keyring, signer: LinkSigner,
                 registry: CollectorRegistry) -> None:
        self.pool = pool
        self.settings = settings
        self.keyring = keyring
        self.signer = signer
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.gateway_timeout_seconds))
        self.guards = {channel: ProviderGuard(channel, settings) for channel in (*CHANNELS, WEBHOOK)}
        # SMTP sessions not sending now, each with when it last sent; smtplib blocks, so emails are sent from
        # threads of their own, one per sender.
        self._smtp_idle: list[tuple[smtplib.SMTP, float]] = []
        self._smtp_lock = threading.Lock()
        self._smtp_threads = ThreadPoolExecutor(settings.senders_per_channel, thread_name_prefix="smtp")
        self._suppressed_at = float("-inf")
        self.outcomes = Counter("tthc_notifications_total", "Notification attempts by channel and outcome",
                                ["channel", "outcome"], registry=registry)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="deliverer")

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.http.close()
        await asyncio.get_running_loop().run_in_executor(self._smtp_threads, self._close_smtp)
        self._smtp_threads.shutdown()

    async def _run(self) -> None:
        while True:
            self.wake.clear()  # before the round: work committed while it runs wakes the next one
            started = time.monotonic()
            try:
                handled = await self.deliver_due()
            except Exception:  # e.g. a database restart (asyncpg's InterfaceError too): the loop must live on
                log.exception("delivery round failed")
                await asyncio.sleep(1.0)
                continue
            if handled >= FULL_ROUND:
                continue  # a backlog: straight on
            if handled:
                # A round costs the database the same few queries whether it finds one message or a hundred:
                # while messages trickle in, let them gather for a moment instead of querying per message.
                await asyncio.sleep(max(0.0, ROUND_SECONDS - (time.monotonic() - started)))
                continue
            now = time.monotonic()
            # Back as soon as a rate-limited or cooling provider may take a message again.
            waits = [w for guard in self.guards.values() if (w := guard.wait(now)) > 0]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), min([1.0, *waits]))

    async def deliver_due(self) -> int:
        """One round: optional messages to citizens who opted out are set aside (at most once a second: the
        sending queries skip them anyway, this only records it), then each provider sends what is due, as much
        as its rate limit and circuit allow. Returns how many messages were handled."""
        suppressed = []
        if time.monotonic() - self._suppressed_at >= 1.0:
            self._suppressed_at = time.monotonic()
            suppressed = await self.pool.fetch(SET_ASIDE_OPTED_OUT)
        for row in suppressed:
            self.outcomes.labels(row["channel"], "opted-out").inc()
        handled = await asyncio.gather(*(self._deliver_channel(guard) for guard in self.guards.values()))
        return len(suppressed) + sum(handled)

    async def _deliver_channel(self, guard: ProviderGuard) -> int:
        room = guard.room(time.monotonic())
        if room <= 0:
            return 0
        # The round's connection makes the claim, then serves its first sender, which records each message's
        # outcome on it as soon as the provider has answered (no pool reset round trip per message).
        async with self.pool.acquire() as conn:
            if guard.channel == WEBHOOK:
                rows = await conn.fetch(CLAIM_FOR_UNITS, datetime.now(UTC), guard.channel, room)
            else:
                async with conn.transaction():
                    rows = await conn.fetch(CLAIM_FOR_CITIZENS, datetime.now(UTC), guard.channel, room)
            guard.claimed(room, len(rows))
            waiting = deque(rows)
            senders = min(self.settings.senders_per_channel, len(rows))
            # Every sender finishes (its outcomes recorded) before the round ends or fails, so none is left
            # using the round's connection after it goes back to the pool.
            ended = await asyncio.gather(self._send_in_turn(waiting, guard, conn),
                                         *(self._send_in_turn_pooled(waiting, guard) for _ in range(senders - 1)),
                                         return_exceptions=True)
        for outcome in ended:
            if isinstance(outcome, BaseException):
                raise outcome
        return len(rows)

    async def _send_in_turn(self, waiting: deque[asyncpg.Record], guard: ProviderGuard, conn: Connection) -> None:
        """One sender: the oldest message still waiting, one at a time, each outcome recorded before the next
        send."""
        while waiting:
            await self._send_one(waiting.popleft(), guard, conn)

    async def _send_in_turn_pooled(self, waiting: deque[asyncpg.Record], guard: ProviderGuard) -> None:
        """A sender with a connection of its own, taken only if messages still wait."""
        if waiting:
            async with self.pool.acquire() as conn:
                await self._send_in_turn(waiting, guard, conn)

    def _message(self, row: asyncpg.Record) -> tuple[str, str, str]:
        """(address, subject, body), opened and rendered only now: contacts stay sealed at rest, and the links
        that act for the dossier are never stored."""
        code = row["dossier_code"]
        applicant = json.loads(self.keyring.open(row["sealed"], code))
        context = {
            **json.loads(row["context"]),
            "full_name": applicant["full_name"],
            "survey_url": self.signer.url(self.settings.survey_base_url, Purpose.SURVEY, code),
            "opt_out_url": self.signer.url(self.settings.opt_out_url, Purpose.OPT_OUT, code),
        }
        subject, body = render(row["template"], row["channel"], context, ascii_sms=self.settings.sms_ascii)
        return applicant["email"] if row["channel"] == "email" else applicant["phone"], subject, body

    async def _send_one(self, row: asyncpg.Record, guard: ProviderGuard, conn: Connection) -> None:
        key = (row["dossier_code"], row["event_id"], row["channel"])
        channel = row["channel"]
        try:
            if channel == WEBHOOK:
                address, subject, body = self._webhook_message(row)
            else:
                address, subject, body = self._message(row)
            email = self._email(address, subject, body, key) if channel == "email" else None
        except (SealError, KeyError, ValueError) as error:
            await self._finish(conn, key, "permanent-failure", f"{type(error).__name__}: cannot build the message")
            self.outcomes.labels(channel, "permanent-failure").inc()
            return
        started = time.monotonic()
        if not guard.breaker.allowed(started):
            await self._release(conn, key)  # the circuit opened on an earlier message of this batch
            return
        guard.bucket.take(started)
        guard.breaker.started(started)
        provider_id: str | None
        try:
            if email is not None:
                provider_id = await asyncio.get_running_loop().run_in_executor(
                    self._smtp_threads, self._smtp_send, address, *email)
            elif channel == WEBHOOK:
                provider_id = await self._webhook_send(address, body)
            else:
                provider_id = await self._gateway_send(channel, address, body, key, row["template"])
        except PermanentFailure as error:
            guard.breaker.succeeded()  # the provider answered: it is up
            await self._finish(conn, key, "permanent-failure", str(error))
            self.outcomes.labels(channel, "permanent-failure").inc()
            return
        except (OSError, smtplib.SMTPException, aiohttp.ClientError, TimeoutError, TemporaryFailure) as error:
            now = time.monotonic()
            guard.breaker.failed(now)
            if isinstance(error, TemporaryFailure) and error.rate_limited:
                guard.bucket.drain(now)
            failed = row["attempts"] >= self.settings.max_attempts
            status = "permanent-failure" if failed else "temporary-failure"
            reason = str(error) if isinstance(error, TemporaryFailure) else type(error).__name__
            await self._finish(conn, key, status, reason, retry_in=backoff(
                row["attempts"], self.settings.retry_base_seconds, self.settings.retry_max_seconds))
            self.outcomes.labels(channel, status).inc()
            return
        guard.breaker.succeeded()
        await self._finish(conn, key, "delivered", None, provider_id=provider_id)
        self.outcomes.labels(channel, "delivered").inc()

    async def _gateway_send(self, channel: str, phone: str, text: str, key: tuple[str, str, str],
                            template: str) -> str | None:
        """SMS and Zalo ZNS go through HTTP gateways; the idempotency key lets a gateway drop a repeat. Returns
        the gateway's id for the message, which its delivery callbacks name."""
        url = self.settings.sms_url if channel == "sms" else self.settings.zalo_url
        payload = {"phone": phone, "text": text, "idempotency_key": ":".join(key), "template": template}
        async with self.http.post(url, json=payload) as reply:
            return await self._answer(f"{channel} gateway", reply)

    def _webhook_message(self, row: asyncpg.Record) -> tuple[str, str, str]:
        """(unit's URL, "", JSON payload): the URL looked up now, so a changed setting applies to what waits."""
        context = json.loads(row["context"])
        url = self.settings.webhook_url(context["unit_code"])
        if url is None:
            raise ValueError("no webhook URL for this unit")
        if self.settings.webhook_secret is None:
            raise ValueError("no webhook secret")
        key = ":".join((row["dossier_code"], row["event_id"], row["channel"]))
        return url, "", json.dumps(webhook.payload(row["template"], context, key), ensure_ascii=False)

    async def _webhook_send(self, url: str, payload: str) -> str | None:
        """Signed now (the timestamp is the send's); the body is the same on every retry."""
        secret = self.settings.webhook_secret
        if secret is None:
            raise PermanentFailure("no webhook secret to sign with (NOTIFY_WEBHOOK_SECRET)")
        raw, headers = webhook.request(secret.get_secret_value().encode(), int(time.time()), json.loads(payload))
        async with self.http.post(url, data=raw, headers=headers) as reply:
            return await self._answer("unit webhook", reply)

    @staticmethod
    async def _answer(provider: str, reply: aiohttp.ClientResponse) -> str | None:
        """The provider's id for the message, if it gave one; its refusals as failures to retry or not."""
        if reply.status == 429:
            raise TemporaryFailure(f"{provider}: too many requests (429)", rate_limited=True)
        if reply.status >= 500:
            raise TemporaryFailure(f"{provider} unavailable ({reply.status})")
        if reply.status >= 400:
            raise PermanentFailure(f"{provider} refused the message ({reply.status})")
        try:
            answer = await reply.json(content_type=None)  # whatever type it declares
        except ValueError:
            return None
        message_id = answer.get("message_id") if isinstance(answer, dict) else None
        return str(message_id)[:200] if message_id else None

    def _email(self, to: str, subject: str, body: str, key: tuple[str, str, str]) -> tuple[str, bytes]:
        """(Message-ID, the message's bytes). The id is deterministic, so a resend after a crash is recognisably
        the same message; bounces name it. Only characters a Message-ID may hold (a colon is not one: parsers
        cut the id there)."""
        message_id = f"<{re.sub(r'[^A-Za-z0-9._/-]', '+', '/'.join(key))}@tthc.gov.vn>"
        return message_id, mail(self.settings.mail_from, to, subject, body, message_id)

    def _smtp_send(self, to: str, message_id: str, message: bytes) -> str:
        smtp = self._smtp_session()
        try:
            # An internationalised address needs a relay that takes SMTPUTF8; one that does not refuses it, and
            # the message is retried like any other refusal.
            smtp.sendmail(parseaddr(self.settings.mail_from)[1], [to], message,
                          mail_options=() if to.isascii() else ("SMTPUTF8", "BODY=8BITMIME"))
        except BaseException:
            _quit(smtp)  # whatever state the session is in, the next message starts a fresh one
            raise
        with self._smtp_lock:
            self._smtp_idle.append((smtp, time.monotonic()))
        return message_id

    def _smtp_session(self) -> smtplib.SMTP:
        """An SMTP session kept open across messages, checked with NOOP when it has been idle long enough for
        the server to have dropped it; a new one when none is idle."""
        while True:
            with self._smtp_lock:
                if not self._smtp_idle:
                    break
                smtp, used = self._smtp_idle.pop()
            if time.monotonic() - used <= SMTP_IDLE_CHECK_SECONDS:
                return smtp
            try:
                code, _ = smtp.noop()
            except (smtplib.SMTPException, OSError):
                code = 0
            if code == 250:
                return smtp
            _quit(smtp)
        return smtplib.SMTP(self.settings.smtp_host, self.settings.smtp_port,
                            timeout=self.settings.gateway_timeout_seconds)

    def _close_smtp(self) -> None:
        with self._smtp_lock:
            idle, self._smtp_idle = self._smtp_idle, []
        for smtp, _ in idle:
            _quit(smtp)

    async def _release(self, conn: Connection, key: tuple[str, str, str]) -> None:
        """Back in the queue as it was, the attempt not counted: the provider was never called."""
        await conn.execute(
            f"UPDATE {SCHEMA}.deliveries SET attempts = attempts - 1, status = CASE WHEN status = 'cancelled' "
            "THEN status WHEN attempts <= 1 THEN 'queued' ELSE 'temporary-failure' END "
            "WHERE dossier_code = $1 AND event_id = $2 AND channel = $3", *key)

    async def _finish(self, conn: Connection, key: tuple[str, str, str], status: str, error: str | None,
                      retry_in: timedelta = timedelta(0), provider_id: str | None = None) -> None:
        now = datetime.now(UTC)
        # The provider has answered and only this process knows it: a write lost to a database restart would
        # leave the row `sending` until notify restarts, and then send it again. So wait the database out, on a
        # connection from the pool once the round's own has failed.
        target: Connection | asyncpg.Pool = conn
        while True:
            try:
                # A due-soon alert cancelled while it was being sent (its dossier closed meanwhile) stays
                # cancelled unless the unit's system took it: no retry for a dossier that no longer runs.
                await target.execute(
                    f"UPDATE {SCHEMA}.deliveries SET "
                    "status = CASE WHEN status = 'cancelled' AND $4 <> 'delivered' THEN status ELSE $4 END, "
                    "last_error = CASE WHEN status = 'cancelled' AND $4 <> 'delivered' "
                    "THEN last_error || '; the send under way: ' || COALESCE($5, $4) ELSE $5 END, "
                    "next_attempt_at = $6, "
                    "delivered_at = CASE WHEN $4 = 'delivered' THEN $7 ELSE delivered_at END, "
                    "provider_message_id = COALESCE($8, provider_message_id) "
                    "WHERE dossier_code = $1 AND event_id = $2 AND channel = $3",
                    *key, status, error, now + retry_in, now, provider_id,
                )
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError):
                log.warning("could not record the outcome of %s; retrying", ":".join(key), exc_info=True)
                target = self.pool
                await asyncio.sleep(1.0)


def _quit(smtp: smtplib.SMTP) -> None:
    with contextlib.suppress(smtplib.SMTPException, OSError):
        smtp.quit()
    smtp.close()
