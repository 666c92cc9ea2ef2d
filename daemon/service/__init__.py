"""The daemon: ZeroMQ server, sessions, security, job dispatch and backends (uses edit/, model/)."""
