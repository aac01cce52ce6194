"""sslyze against a TLS endpoint on loopback, judged by Mozilla's "modern" configuration.

Shared by the native gateway test (tests/bundle/stack) and the lab's gw1 test (tests/lab): one scan
trusting the given CA, the completed result, and the checker's issues (empty when compliant).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def scan_mozilla_modern(
    server_name: str, port: int, ca_file: Path, *, http_headers: bool = False
) -> tuple[Any, dict[str, str]]:
    """Scan ``server_name`` at 127.0.0.1:``port``; return (sslyze's scan result, non-compliance issues)."""
    from sslyze import (
        CertificateInfoExtraArgument,
        ScanCommand,
        ScanCommandsExtraArguments,
        Scanner,
        ServerNetworkLocation,
        ServerScanRequest,
        ServerScanStatusEnum,
    )
    from sslyze.mozilla_tls_profile.tls_config_checker import (
        SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        MozillaTlsConfiguration,
        ServerNotCompliantWithTlsConfiguration,
        TlsConfigurationEnum,
        check_server_against_tls_configuration,
    )

    commands = set(SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER)
    if http_headers:
        commands.add(ScanCommand.HTTP_HEADERS)
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(server_name, port, ip_address="127.0.0.1"),
        scan_commands=commands,
        scan_commands_extra_arguments=ScanCommandsExtraArguments(
            certificate_info=CertificateInfoExtraArgument(custom_ca_file=ca_file)
        ),
    )
    scanner = Scanner()
    scanner.queue_scans([request])
    results = list(scanner.get_results())
    assert len(results) == 1 and results[0].scan_status == ServerScanStatusEnum.COMPLETED, (
        f"sslyze could not scan {server_name} on port {port}: {results}"
    )
    try:
        check_server_against_tls_configuration(
            results[0], MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_MODERN)
        )
    except ServerNotCompliantWithTlsConfiguration as exc:
        return results[0], dict(exc.issues)
    return results[0], {}
