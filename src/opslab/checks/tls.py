"""Checks on TLS: what the gateway really serves, verified as a client verifies it."""

from __future__ import annotations

import datetime as dt
import ssl

from opslab import gateway
from opslab.checks.core import NotYet, settle


def certificate_served(host: str, ingress_address: str, ca_pem: str, min_days_left: float = 30,
                       serial_differs_from: int | None = None, timeout: float = 20) -> None:
    """The gateway at `ingress_address` (`127.0.0.1:8443`) serves `host` a certificate that
    verifies with the CA `ca_pem` for that name, has at least `min_days_left` days to run, and,
    when `serial_differs_from` is given, is a new one: another serial number."""
    address, _, port = ingress_address.rpartition(":")

    def look():
        try:
            certificate = gateway.served_certificate(host, ca_pem, (address.strip("[]"), int(port)))
        except ssl.SSLCertVerificationError as error:
            raise NotYet(f"The certificate served for {host} at {ingress_address} does not verify with "
                         f"the lab's CA: {error.verify_message}.") from None
        except OSError as error:
            raise NotYet(f"Nothing answers TLS for {host} at {ingress_address}: {error}.") from None
        left = (certificate.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds() / 86400
        if left < min_days_left:
            raise NotYet(f"The certificate served for {host} expires in {left:.1f} days, fewer than "
                         f"{min_days_left:g}: renew it.")
        if serial_differs_from is not None and certificate.serial_number == serial_differs_from:
            raise NotYet(f"{host} is still served the old certificate (serial {certificate.serial_number:x}): "
                         f"it has not been renewed.")
    settle(look, timeout)
