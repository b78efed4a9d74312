"""A real SMTP receiver that requires STARTTLS and then AUTH, for the mailer tests.

aiosmtpd's command line cannot set an authenticator, so this starts its SMTP class directly.
Messages land in MAILDIR/new exactly like `python3 -m aiosmtpd -c aiosmtpd.handlers.Mailbox`.

usage: SMTPD_PASSWORD=... python3 smtpd_auth.py HOST PORT MAILDIR CERT KEY USER
"""

import asyncio
import os
import ssl
import sys

from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def main() -> None:
    host, port, maildir, cert, key, user = sys.argv[1:]
    password = os.environ["SMTPD_PASSWORD"].encode()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)

    def authenticator(server, session, envelope, mechanism, data):
        ok = (
            isinstance(data, LoginPassword)
            and data.login == user.encode()
            and data.password == password
        )
        # handled=False: aiosmtpd answers "535 5.7.8 Authentication credentials invalid".
        return AuthResult(success=ok, handled=False)

    handler = Mailbox(maildir)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    factory = lambda: SMTP(  # noqa: E731
        handler,
        tls_context=tls,
        require_starttls=True,
        auth_required=True,
        authenticator=authenticator,
        loop=loop,
    )
    loop.run_until_complete(loop.create_server(factory, host=host, port=int(port)))
    loop.run_forever()


if __name__ == "__main__":
    main()
