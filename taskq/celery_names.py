"""Celery's setting names: the old uppercase aliases, and the names taskq does not implement.

``taskq.config.Settings`` has a typed field for every setting taskq implements,
under Celery's name. Celery has about 200 more; most configure parts taskq does not
have (other result backends, message signing, logging formats). Giving each one a
dataclass field would make ``Settings`` a list of values nothing reads, so they live
here instead, as data: ``GAPS`` says, for each Celery name without a field, why
taskq does not implement it, and for which values taskq behaves as Celery would
anyway (``Gap.same``). ``Settings`` accepts those names, keeps their values, and
the worker and beat log one warning a start for each value taskq will not honour
(``Settings.unimplemented``). A name neither Celery nor taskq knows stays an error.

``OLD_NAMES`` maps Celery's pre-4.0 uppercase names (``CELERY_ALWAYS_EAGER``,
``BROKER_URL``, ``CELERYD_CONCURRENCY``) to the lowercase ones, as Celery's own
table does; tests/test_celery_settings.py checks both tables against the installed
Celery.
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["CELERY_NAMES", "DIFFERENT", "GAPS", "OLD_NAMES", "Gap", "gap_of"]


class Gap(NamedTuple):
    """Why taskq does not implement a Celery setting.

    Attributes:
        reason: what taskq does instead, or why it has no such thing.
        same: values under which taskq behaves as Celery does with that value (no
            warning is due for them).
    """

    reason: str
    same: tuple[Any, ...] = ()


#: Celery's old uppercase setting names and the lowercase names they stand for.
OLD_NAMES: dict[str, str] = {
    "AZUREBLOCKBLOB_BASE_PATH": "azureblockblob_base_path",
    "AZUREBLOCKBLOB_CONNECTION_TIMEOUT": "azureblockblob_connection_timeout",
    "AZUREBLOCKBLOB_CONTAINER_NAME": "azureblockblob_container_name",
    "AZUREBLOCKBLOB_READ_TIMEOUT": "azureblockblob_read_timeout",
    "AZUREBLOCKBLOB_RETRY_INCREMENT_BASE": "azureblockblob_retry_increment_base",
    "AZUREBLOCKBLOB_RETRY_INITIAL_BACKOFF_SEC": "azureblockblob_retry_initial_backoff_sec",
    "AZUREBLOCKBLOB_RETRY_MAX_ATTEMPTS": "azureblockblob_retry_max_attempts",
    "BROKER_CHANNEL_ERROR_RETRY": "broker_channel_error_retry",
    "BROKER_CONNECTION_MAX_RETRIES": "broker_connection_max_retries",
    "BROKER_CONNECTION_RETRY": "broker_connection_retry",
    "BROKER_CONNECTION_RETRY_ON_STARTUP": "broker_connection_retry_on_startup",
    "BROKER_CONNECTION_TIMEOUT": "broker_connection_timeout",
    "BROKER_FAILOVER_STRATEGY": "broker_failover_strategy",
    "BROKER_HEARTBEAT": "broker_heartbeat",
    "BROKER_HEARTBEAT_CHECKRATE": "broker_heartbeat_checkrate",
    "BROKER_HOST": "broker_host",
    "BROKER_LOGIN_METHOD": "broker_login_method",
    "BROKER_NATIVE_DELAYED_DELIVERY_QUEUE_TYPE": "broker_native_delayed_delivery_queue_type",
    "BROKER_PASSWORD": "broker_password",
    "BROKER_POOL_ACQUIRE_TIMEOUT": "broker_pool_acquire_timeout",
    "BROKER_POOL_LIMIT": "broker_pool_limit",
    "BROKER_PORT": "broker_port",
    "BROKER_READ_URL": "broker_read_url",
    "BROKER_TRANSPORT": "broker_transport",
    "BROKER_TRANSPORT_OPTIONS": "broker_transport_options",
    "BROKER_URL": "broker_url",
    "BROKER_USER": "broker_user",
    "BROKER_USE_SSL": "broker_use_ssl",
    "BROKER_VHOST": "broker_vhost",
    "BROKER_WRITE_URL": "broker_write_url",
    "CASSANDRA_AUTH_KWARGS": "cassandra_auth_kwargs",
    "CASSANDRA_AUTH_PROVIDER": "cassandra_auth_provider",
    "CASSANDRA_BUNDLE_PATH": "cassandra_bundle_path",
    "CASSANDRA_ENTRY_TTL": "cassandra_entry_ttl",
    "CASSANDRA_KEYSPACE": "cassandra_keyspace",
    "CASSANDRA_OPTIONS": "cassandra_options",
    "CASSANDRA_PORT": "cassandra_port",
    "CASSANDRA_READ_CONSISTENCY": "cassandra_read_consistency",
    "CASSANDRA_SERVERS": "cassandra_servers",
    "CASSANDRA_TABLE": "cassandra_table",
    "CASSANDRA_WRITE_CONSISTENCY": "cassandra_write_consistency",
    "CELERYBEAT_CRON_STARTING_DEADLINE": "beat_cron_starting_deadline",
    "CELERYBEAT_ENABLE_REMOTE_CONTROL": "beat_enable_remote_control",
    "CELERYBEAT_MAX_LOOP_INTERVAL": "beat_max_loop_interval",
    "CELERYBEAT_REMOTE_CONTROL_MAX_TICK_AGE": "beat_remote_control_max_tick_age",
    "CELERYBEAT_SCHEDULE": "beat_schedule",
    "CELERYBEAT_SCHEDULER": "beat_scheduler",
    "CELERYBEAT_SCHEDULE_FILENAME": "beat_schedule_filename",
    "CELERYBEAT_SYNC_EVERY": "beat_sync_every",
    "CELERYD_AGENT": "worker_agent",
    "CELERYD_AUTOSCALER": "worker_autoscaler",
    "CELERYD_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS": "worker_cancel_long_running_tasks_on_connection_loss",
    "CELERYD_CONCURRENCY": "worker_concurrency",
    "CELERYD_CONSUMER": "worker_consumer",
    "CELERYD_DEDUPLICATE_SUCCESSFUL_TASKS": "worker_deduplicate_successful_tasks",
    "CELERYD_DETECT_QUORUM_QUEUES": "worker_detect_quorum_queues",
    "CELERYD_DISABLE_PREFETCH": "worker_disable_prefetch",
    "CELERYD_ENABLE_PREFETCH_COUNT_REDUCTION": "worker_enable_prefetch_count_reduction",
    "CELERYD_ENABLE_SOFT_SHUTDOWN_ON_IDLE": "worker_enable_soft_shutdown_on_idle",
    "CELERYD_ETA_TASK_LIMIT": "worker_eta_task_limit",
    "CELERYD_HIJACK_ROOT_LOGGER": "worker_hijack_root_logger",
    "CELERYD_LOG_COLOR": "worker_log_color",
    "CELERYD_LOG_DATEFMT": "worker_log_datefmt",
    "CELERYD_LOG_FORMAT": "worker_log_format",
    "CELERYD_MAX_MEMORY_PER_CHILD": "worker_max_memory_per_child",
    "CELERYD_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
    "CELERYD_POOL": "worker_pool",
    "CELERYD_POOL_PUTLOCKS": "worker_pool_putlocks",
    "CELERYD_POOL_RESTARTS": "worker_pool_restarts",
    "CELERYD_POOL_START_METHOD": "worker_pool_start_method",
    "CELERYD_PREFETCH_MULTIPLIER": "worker_prefetch_multiplier",
    "CELERYD_PROC_ALIVE_TIMEOUT": "worker_proc_alive_timeout",
    "CELERYD_SOFT_SHUTDOWN_TIMEOUT": "worker_soft_shutdown_timeout",
    "CELERYD_STATE_DB": "worker_state_db",
    "CELERYD_TASK_LOG_DATEFMT": "worker_task_log_datefmt",
    "CELERYD_TASK_LOG_FORMAT": "worker_task_log_format",
    "CELERYD_TASK_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERYD_TASK_TIME_LIMIT": "task_time_limit",
    "CELERYD_TIMER": "worker_timer",
    "CELERYD_TIMER_PRECISION": "worker_timer_precision",
    "CELERYD_WORKER_LOST_WAIT": "worker_lost_wait",
    "CELERY_ACCEPT_CONTENT": "accept_content",
    "CELERY_ACKS_LATE": "task_acks_late",
    "CELERY_ACKS_ON_FAILURE": "task_acks_on_failure",
    "CELERY_ACKS_ON_FAILURE_OR_TIMEOUT": "task_acks_on_failure_or_timeout",
    "CELERY_ACKS_ON_TIMEOUT": "task_acks_on_timeout",
    "CELERY_ALLOW_ERROR_CB_ON_CHORD_HEADER": "task_allow_error_cb_on_chord_header",
    "CELERY_ALWAYS_EAGER": "task_always_eager",
    "CELERY_ANNOTATIONS": "task_annotations",
    "CELERY_ARANGODB_BACKEND_SETTINGS": "arangodb_backend_settings",
    "CELERY_CACHE_BACKEND": "cache_backend",
    "CELERY_CACHE_BACKEND_OPTIONS": "cache_backend_options",
    "CELERY_COUCHBASE_BACKEND_SETTINGS": "couchbase_backend_settings",
    "CELERY_CREATE_MISSING_QUEUES": "task_create_missing_queues",
    "CELERY_CREATE_MISSING_QUEUE_EXCHANGE_TYPE": "task_create_missing_queue_exchange_type",
    "CELERY_CREATE_MISSING_QUEUE_TYPE": "task_create_missing_queue_type",
    "CELERY_DEFAULT_DELIVERY_MODE": "task_default_delivery_mode",
    "CELERY_DEFAULT_EXCHANGE": "task_default_exchange",
    "CELERY_DEFAULT_EXCHANGE_TYPE": "task_default_exchange_type",
    "CELERY_DEFAULT_PRIORITY": "task_default_priority",
    "CELERY_DEFAULT_QUEUE": "task_default_queue",
    "CELERY_DEFAULT_QUEUE_TYPE": "task_default_queue_type",
    "CELERY_DEFAULT_RATE_LIMIT": "task_default_rate_limit",
    "CELERY_DEFAULT_ROUTING_KEY": "task_default_routing_key",
    "CELERY_DISABLE_RATE_LIMITS": "worker_disable_rate_limits",
    "CELERY_EAGER_PROPAGATES_EXCEPTIONS": "task_eager_propagates",
    "CELERY_ELASTICSEARCH_MAX_RETRIES": "elasticsearch_max_retries",
    "CELERY_ELASTICSEARCH_RETRY_ON_TIMEOUT": "elasticsearch_retry_on_timeout",
    "CELERY_ELASTICSEARCH_SAVE_META_AS_TEXT": "elasticsearch_save_meta_as_text",
    "CELERY_ELASTICSEARCH_TIMEOUT": "elasticsearch_timeout",
    "CELERY_ENABLE_REMOTE_CONTROL": "worker_enable_remote_control",
    "CELERY_EVENT_EXCHANGE": "event_exchange",
    "CELERY_EVENT_QUEUE_DURABLE": "event_queue_durable",
    "CELERY_EVENT_QUEUE_EXCLUSIVE": "event_queue_exclusive",
    "CELERY_EVENT_QUEUE_EXPIRES": "event_queue_expires",
    "CELERY_EVENT_QUEUE_PREFIX": "event_queue_prefix",
    "CELERY_EVENT_QUEUE_TTL": "event_queue_ttl",
    "CELERY_EVENT_SERIALIZER": "event_serializer",
    "CELERY_IGNORE_RESULT": "task_ignore_result",
    "CELERY_IMPORTS": "imports",
    "CELERY_INCLUDE": "include",
    "CELERY_INHERIT_PARENT_PRIORITY": "task_inherit_parent_priority",
    "CELERY_MAX_CACHED_RESULTS": "result_cache_max",
    "CELERY_MESSAGE_COMPRESSION": "task_compression",
    "CELERY_MONGODB_BACKEND_SETTINGS": "mongodb_backend_settings",
    "CELERY_QUEUES": "task_queues",
    "CELERY_QUEUE_MAX_PRIORITY": "task_queue_max_priority",
    "CELERY_REDIRECT_STDOUTS": "worker_redirect_stdouts",
    "CELERY_REDIRECT_STDOUTS_LEVEL": "worker_redirect_stdouts_level",
    "CELERY_REDIS_BACKEND_USE_SSL": "redis_backend_use_ssl",
    "CELERY_REDIS_DB": "redis_db",
    "CELERY_REDIS_HOST": "redis_host",
    "CELERY_REDIS_MAX_CONNECTIONS": "redis_max_connections",
    "CELERY_REDIS_PASSWORD": "redis_password",
    "CELERY_REDIS_PORT": "redis_port",
    "CELERY_REDIS_RETRY_ON_TIMEOUT": "redis_retry_on_timeout",
    "CELERY_REDIS_SOCKET_CONNECT_TIMEOUT": "redis_socket_connect_timeout",
    "CELERY_REDIS_SOCKET_KEEPALIVE": "redis_socket_keepalive",
    "CELERY_REDIS_SOCKET_TIMEOUT": "redis_socket_timeout",
    "CELERY_REDIS_USERNAME": "redis_username",
    "CELERY_REJECT_ON_WORKER_LOST": "task_reject_on_worker_lost",
    "CELERY_REMOTE_TRACEBACKS": "task_remote_tracebacks",
    "CELERY_REPR_MAXLEVELS": "task_repr_maxlevels",
    "CELERY_RESULT_BACKEND": "result_backend",
    "CELERY_RESULT_BACKEND_ALWAYS_RETRY": "result_backend_always_retry",
    "CELERY_RESULT_BACKEND_BASE_SLEEP_BETWEEN_RETRIES_MS": "result_backend_base_sleep_between_retries_ms",
    "CELERY_RESULT_BACKEND_MAX_RETRIES": "result_backend_max_retries",
    "CELERY_RESULT_BACKEND_MAX_SLEEP_BETWEEN_RETRIES_MS": "result_backend_max_sleep_between_retries_ms",
    "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS": "result_backend_transport_options",
    "CELERY_RESULT_CHORD_EXPIRES": "result_chord_expires",
    "CELERY_RESULT_CHORD_JOIN_TIMEOUT": "result_chord_join_timeout",
    "CELERY_RESULT_CHORD_RETRY_INTERVAL": "result_chord_retry_interval",
    "CELERY_RESULT_COMPRESSION": "result_compression",
    "CELERY_RESULT_DBURI": "database_url",
    "CELERY_RESULT_DB_SHORT_LIVED_SESSIONS": "database_short_lived_sessions",
    "CELERY_RESULT_DB_TABLENAMES": "database_table_names",
    "CELERY_RESULT_ENGINE_OPTIONS": "database_engine_options",
    "CELERY_RESULT_EXCHANGE": "result_exchange",
    "CELERY_RESULT_EXCHANGE_TYPE": "result_exchange_type",
    "CELERY_RESULT_EXTENDED": "result_extended",
    "CELERY_RESULT_FAILURE_EXPIRES": "result_failure_expires",
    "CELERY_RESULT_PERSISTENT": "result_persistent",
    "CELERY_RESULT_SERIALIZER": "result_serializer",
    "CELERY_RETRY_ON_WORKER_LOST": "task_retry_on_worker_lost",
    "CELERY_ROUTES": "task_routes",
    "CELERY_SECURITY_CERTIFICATE": "security_certificate",
    "CELERY_SECURITY_CERT_STORE": "security_cert_store",
    "CELERY_SECURITY_DIGEST": "security_digest",
    "CELERY_SECURITY_KEY": "security_key",
    "CELERY_SECURITY_KEY_PASSWORD": "security_key_password",
    "CELERY_SEND_EVENTS": "worker_send_task_events",
    "CELERY_SEND_TASK_SENT_EVENT": "task_send_sent_event",
    "CELERY_STORE_EAGER_RESULT": "task_store_eager_result",
    "CELERY_STORE_ERRORS_EVEN_IF_IGNORED": "task_store_errors_even_if_ignored",
    "CELERY_TASK_PROTOCOL": "task_protocol",
    "CELERY_TASK_PUBLISH_RETRY": "task_publish_retry",
    "CELERY_TASK_PUBLISH_RETRY_POLICY": "task_publish_retry_policy",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERY_TASK_SERIALIZER": "task_serializer",
    "CELERY_TIMEZONE": "timezone",
    "CELERY_TRACK_STARTED": "task_track_started",
    "CELERY_WORKER_DIRECT": "worker_direct",
    "CONTROL_EXCHANGE": "control_exchange",
    "CONTROL_QUEUE_DURABLE": "control_queue_durable",
    "CONTROL_QUEUE_EXCLUSIVE": "control_queue_exclusive",
    "CONTROL_QUEUE_EXPIRES": "control_queue_expires",
    "CONTROL_QUEUE_TTL": "control_queue_ttl",
    "COSMOSDBSQL_COLLECTION_NAME": "cosmosdbsql_collection_name",
    "COSMOSDBSQL_CONSISTENCY_LEVEL": "cosmosdbsql_consistency_level",
    "COSMOSDBSQL_DATABASE_NAME": "cosmosdbsql_database_name",
    "COSMOSDBSQL_MAX_RETRY_ATTEMPTS": "cosmosdbsql_max_retry_attempts",
    "COSMOSDBSQL_MAX_RETRY_WAIT_TIME": "cosmosdbsql_max_retry_wait_time",
    "DATABASE_CREATE_TABLES_AT_SETUP": "database_create_tables_at_setup",
    "DATABASE_ENGINE_CALLBACK": "database_engine_callback",
    "DATABASE_TABLE_SCHEMAS": "database_table_schemas",
    "ENABLE_UTC": "enable_utc",
    "GCS_BASE_PATH": "gcs_base_path",
    "GCS_BUCKET": "gcs_bucket",
    "GCS_PROJECT": "gcs_project",
    "GCS_TTL": "gcs_ttl",
    "RESULT_ACCEPT_CONTENT": "result_accept_content",
    "S3_ACCESS_KEY_ID": "s3_access_key_id",
    "S3_BASE_PATH": "s3_base_path",
    "S3_BUCKET": "s3_bucket",
    "S3_ENDPOINT_URL": "s3_endpoint_url",
    "S3_REGION": "s3_region",
    "S3_SECRET_ACCESS_KEY": "s3_secret_access_key",
}

#: Every setting name Celery knows (lowercase).
CELERY_NAMES: frozenset[str] = frozenset(OLD_NAMES.values())

_BACKENDS = "taskq's result backends are redis://, db+<SQLAlchemy URL>, sqlite:// and memory://"
#: Result backends taskq does not have: a setting with this prefix configures one.
_BACKEND_FAMILIES = {
    "arangodb_": "ArangoDB",
    "azureblockblob_": "Azure Block Blob",
    "cassandra_": "Cassandra",
    "cosmosdbsql_": "Cosmos DB",
    "couchbase_": "Couchbase",
    "elasticsearch_": "Elasticsearch",
    "gcs_": "Google Cloud Storage",
    "mongodb_": "MongoDB",
    "s3_": "S3",
    "cache_": "cache (memcached)",
}
_URL = "give it in broker_url (scheme://user:password@host:port/vhost)"
_REDIS_URL = "give it in the result_backend URL (redis://user:password@host:port/db)"
_REDIS_OPTION = "set {} in result_backend_transport_options"
_LOGGING = "the taskq CLI formats logs itself (-l, --logfile, --json-logs)"
_NO_SIGNING = (
    "taskq signs messages with HMAC keys, not X.509 certificates (Celery's auth "
    "serializer): see security_keys and docs/security.md"
)
_PIDBOX = "taskq's remote control queues are exclusive and not durable, Celery's defaults"
_EVENT_QUEUES = "taskq's event receivers use queues that are not durable and go when they stop"

#: Why each Celery setting without a ``Settings`` field is not implemented.
GAPS: dict[str, Gap] = {
    # beat
    "beat_cron_starting_deadline": Gap(
        "taskq beat sends a missed run once, for the latest missed due time (docs/beat.md)", (None,)
    ),
    "beat_enable_remote_control": Gap("taskq beat answers no remote control", (False,)),
    "beat_remote_control_max_tick_age": Gap("taskq beat answers no remote control", (None,)),
    "beat_schedule_filename": Gap(
        "taskq beat keeps no schedule file: progress lives in the "
        "result backend, shared by standby beats (docs/beat.md)",
        ("celerybeat-schedule",),
    ),
    "beat_scheduler": Gap(
        "custom schedulers (django-celery-beat's DatabaseScheduler) are not "
        "supported: taskq beat runs beat_schedule and app.add_periodic_task entries",
        ("celery.beat:PersistentScheduler", "celery.beat.PersistentScheduler"),
    ),
    "beat_sync_every": Gap("taskq beat keeps no schedule file to sync", (0,)),
    # broker
    "broker_channel_error_retry": Gap(
        "a channel error is retried like a connection error: the worker reconnects with backoff",
        (False, True),
    ),
    "broker_connection_retry": Gap(
        "the taskq worker always reconnects with backoff after losing the broker", (True,)
    ),
    "broker_failover_strategy": Gap("taskq connects to one broker URL", (None,)),
    "broker_heartbeat": Gap(
        "taskq's RabbitMQ connections use no AMQP heartbeats; the "
        "worker's broker leases have their own (worker_lease_timeout)",
        (None, 0),
    ),
    "broker_heartbeat_checkrate": Gap(
        "taskq's RabbitMQ connections use no AMQP heartbeats", (3.0, 3)
    ),
    "broker_host": Gap(_URL, (None,)),
    "broker_login_method": Gap(
        "taskq logs in to RabbitMQ with AMQPLAIN (kombu's default)", (None, "AMQPLAIN")
    ),
    "broker_native_delayed_delivery_queue_type": Gap(
        "set broker_transport_options="
        "{'delayed_delivery': 'quorum' or 'classic'} (docs/delayed.md)",
        ("quorum",),
    ),
    "broker_password": Gap(_URL, (None,)),
    "broker_pool_acquire_timeout": Gap(
        "taskq's producer shares one connection (RabbitMQ) "
        "or one capped pool (Redis): see broker_pool_limit",
        (None,),
    ),
    "broker_port": Gap(_URL, (None,)),
    "broker_read_url": Gap("taskq reads and writes through broker_url", (None,)),
    "broker_transport": Gap("the transport is chosen by the broker_url scheme", (None,)),
    "broker_use_ssl": Gap("use a rediss:// or amqps:// URL", (False, None)),
    "broker_user": Gap(_URL, (None,)),
    "broker_vhost": Gap(_URL, (None,)),
    "broker_write_url": Gap("taskq reads and writes through broker_url", (None,)),
    # monitoring and remote control (the rest are Settings fields: docs/monitoring.md)
    "control_queue_durable": Gap(_PIDBOX, (False,)),
    "control_queue_exclusive": Gap(_PIDBOX, (True,)),
    "event_queue_durable": Gap(_EVENT_QUEUES, (False,)),
    "event_queue_exclusive": Gap(_EVENT_QUEUES),
    "event_serializer": Gap("taskq sends and reads events as JSON, Celery's default", ("json",)),
    # the SQL result backend
    "database_create_tables_at_setup": Gap(
        "taskq's SQL backend creates its table on first use", (True, False)
    ),
    "database_engine_callback": Gap(
        "not supported: set engine options in "
        "result_backend_transport_options={'engine_options': {...}}",
        (None,),
    ),
    "database_engine_options": Gap(
        "set result_backend_transport_options={'engine_options': {...}}", ({},)
    ),
    "database_short_lived_sessions": Gap(
        "taskq's SQL backend uses one short transaction per operation from a pooled engine",
        (False, True),
    ),
    "database_table_names": Gap(
        "taskq's SQL backend keeps results in one key-value table, "
        "named by result_backend_transport_options={'table_name': ...}, not Celery's "
        "celery_taskmeta (whose pickled results taskq will not read)",
        (None,),
    ),
    "database_table_schemas": Gap(
        "name the schema in the table_name transport option or the database URL", (None,)
    ),
    "database_url": Gap("give the database as result_backend='db+<SQLAlchemy URL>'", (None,)),
    # Celery's Redis result backend, configured outside its URL
    "redis_backend_use_ssl": Gap("use a rediss:// result_backend URL", (None,)),
    "redis_db": Gap(_REDIS_URL, (None,)),
    "redis_host": Gap(_REDIS_URL, (None,)),
    "redis_max_connections": Gap(_REDIS_OPTION.format("max_connections"), (None,)),
    "redis_password": Gap(_REDIS_URL, (None,)),
    "redis_port": Gap(_REDIS_URL, (None,)),
    "redis_retry_on_timeout": Gap(
        "taskq retries storing a result on any recoverable error (result_backend_always_retry)",
        (False, True),
    ),
    "redis_socket_connect_timeout": Gap(_REDIS_OPTION.format("socket_connect_timeout"), (None,)),
    "redis_socket_keepalive": Gap("not supported", (False,)),
    "redis_socket_timeout": Gap(_REDIS_OPTION.format("socket_timeout"), (120.0, 120)),
    "redis_username": Gap(_REDIS_URL, (None,)),
    # results
    "result_cache_max": Gap(
        "taskq keeps no client-side result cache beyond ready results an AsyncResult read",
        (-1, None),
    ),
    "result_chord_expires": Gap("chord bookkeeping expires with result_expires", (None,)),
    "result_chord_join_timeout": Gap(
        "taskq workers never block joining a chord: the header "
        "task that completes it reads the results in one call",
        (3.0, 3),
    ),
    "result_chord_retry_interval": Gap(
        "celery.chord_unlock polls at the interval its message carries (Celery's producer sets it)",
        (1.0, 1),
    ),
    "result_compression": Gap("results are not compressed", (None,)),
    "result_exchange": Gap(
        "for Celery's amqp/rpc result backends, which taskq does not have", ("celeryresults",)
    ),
    "result_exchange_type": Gap(
        "for Celery's amqp/rpc result backends, which taskq does not have", ("direct",)
    ),
    "result_failure_expires": Gap("failures expire with result_expires", (None,)),
    "result_persistent": Gap(
        "taskq's result backends always keep results across restarts (until result_expires)",
        (None, True),
    ),
    # tasks
    "task_acks_on_failure": Gap(
        "a failed task's message is always acknowledged (task_acks_on_failure_or_timeout=True)",
        (None, True),
    ),
    "task_acks_on_failure_or_timeout": Gap(
        "a failed or timed-out task's message is always "
        "acknowledged; to run a task again, retry it",
        (True,),
    ),
    "task_acks_on_timeout": Gap("a timed-out task's message is always acknowledged", (None, True)),
    "task_allow_error_cb_on_chord_header": Gap(
        "errbacks on chord header tasks run when that "
        "task fails, and the body's errbacks when the chord fails",
        (False,),
    ),
    "task_annotations": Gap(
        "not supported: give options on the task (@app.task(rate_limit="
        "...)) or route with task_routes",
        (None,),
    ),
    "task_compression": Gap("messages are not compressed", (None,)),
    "task_default_delivery_mode": Gap(
        "taskq always publishes persistent messages", (2, "persistent")
    ),
    "task_inherit_parent_priority": Gap("a task sent from a task gets its own priority", (False,)),
    "task_protocol": Gap("taskq sends protocol 2 and reads 1 and 2", (2,)),
    "task_remote_tracebacks": Gap(
        "AsyncResult.traceback holds the worker's traceback as "
        "text; exceptions are not re-raised with it",
        (False,),
    ),
    "task_repr_maxlevels": Gap("argsrepr/kwargsrepr are cut at 1024 characters", (3,)),
    "task_retry_on_worker_lost": Gap(
        "a task whose process died is delivered again "
        "(task_reject_on_worker_lost, on by default), up to task_max_delivery_attempts",
        (False, True),
    ),
    "task_store_errors_even_if_ignored": Gap(
        "tasks that ignore their result store no failure either", (False,)
    ),
    # workers
    "worker_agent": Gap("not supported", (None,)),
    "worker_autoscaler": Gap(
        "taskq's --autoscale has its own policy", ("celery.worker.autoscale:Autoscaler",)
    ),
    "worker_cancel_long_running_tasks_on_connection_loss": Gap(
        "taskq keeps running tasks "
        "through a broker outage: their leases belong to the worker, not the connection",
        (False,),
    ),
    "worker_consumer": Gap("the consumer is not replaceable", ("celery.worker.consumer:Consumer",)),
    "worker_deduplicate_successful_tasks": Gap(
        "a message delivered again after its task succeeded runs again (at least once)", (False,)
    ),
    "worker_detect_quorum_queues": Gap(
        "taskq declares queues from task_queues and "
        "task_default_queue_type, the same in every process",
        (True, False),
    ),
    "worker_direct": Gap("no per-worker queues", (False,)),
    "worker_disable_prefetch": Gap("set worker_prefetch_multiplier=1", (False,)),
    "worker_disable_rate_limits": Gap("rate limits always apply", (False,)),
    "worker_enable_prefetch_count_reduction": Gap(
        "taskq sizes its prefetch window itself (docs/worker.md)", (True, False)
    ),
    "worker_enable_soft_shutdown_on_idle": Gap(
        "taskq's warm shutdown waits worker_shutdown_timeout for running tasks", (False,)
    ),
    "worker_eta_task_limit": Gap(
        "taskq workers park not-yet-due messages in the broker's "
        "delayed store instead of holding them (docs/delayed.md)",
        (None,),
    ),
    "worker_hijack_root_logger": Gap(_LOGGING, (True,)),
    "worker_log_color": Gap(_LOGGING, (None, False)),
    "worker_log_datefmt": Gap(_LOGGING, (None,)),
    "worker_log_format": Gap(
        _LOGGING, ("[%(asctime)s: %(levelname)s/%(processName)s] %(message)s",)
    ),
    "worker_lost_wait": Gap("not needed: prefork children report their own exit", (10.0, 10)),
    "worker_pool_putlocks": Gap("not supported", (True,)),
    "worker_pool_restarts": Gap("no pool_restart control command", (False,)),
    "worker_pool_start_method": Gap("prefork children are forked", ("fork",)),
    "worker_proc_alive_timeout": Gap("not supported", (4.0, 4)),
    "worker_soft_shutdown_timeout": Gap(
        "taskq's warm shutdown waits worker_shutdown_timeout for running tasks", (0.0, 0)
    ),
    "worker_state_db": Gap(
        "revoked ids live in the result backend, so they outlive a restart without a state file",
        (None,),
    ),
    "worker_task_log_datefmt": Gap(_LOGGING, (None,)),
    "worker_task_log_format": Gap(
        _LOGGING,
        ("[%(asctime)s: %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s",),
    ),
    "worker_timer": Gap("not replaceable", (None,)),
    "worker_timer_precision": Gap(
        "not needed: taskq's worker loop wakes on its own deadlines", (1.0, 1)
    ),
}
for _prefix, _backend in _BACKEND_FAMILIES.items():
    for _name in CELERY_NAMES:
        if _name.startswith(_prefix):
            GAPS[_name] = Gap(f"taskq has no {_backend} result backend; {_BACKENDS}")
for _prefix in ("security_",):
    for _name in CELERY_NAMES:
        if _name.startswith(_prefix):
            GAPS[_name] = Gap(_NO_SIGNING, (None,))


#: How a setting taskq implements under Celery's name behaves differently.
DIFFERENT: dict[str, str] = {
    "broker_url": "redis://, rediss://, amqp://, amqps://, pyamqp://, memory:// and taskq's "
    "embedded sqlite://; none at all means the embedded SQLite file",
    "broker_transport_options": "on Redis, kombu's visibility_timeout is taskq's lease (a dead "
    "worker's messages come back after it, a live worker's never) and polling_interval is "
    "poll_interval; kombu's other options are accepted with a warning",
    "broker_pool_limit": "caps a producer's Redis connections; a RabbitMQ producer uses one "
    "connection",
    "result_backend": "redis://, db+<SQLAlchemy URL>, sqlite:// and memory://; Celery's other "
    "backends (rpc://, django-db, cache, ...) are not available",
    "task_acks_late": "True by default (Celery: False): a task is acknowledged after it ran",
    "task_reject_on_worker_lost": "True by default: a task whose process died is delivered "
    "again, up to task_max_delivery_attempts",
    "task_routes": "a route names a queue (or an exchange and routing key bound to a declared "
    "queue)",
    "task_queues": "on Redis a queue's arguments do not apply (its binding entry is written as "
    "kombu writes it)",
    "worker_prefetch_multiplier": "under a backlog of short tasks a worker leases more at a "
    "time (docs/worker.md)",
    "worker_pool": "taskq's pools (docs/worker.md)",
    "enable_utc": "messages always carry aware UTC times",
}


def gap_of(name: str) -> Gap | None:
    """Why taskq does not implement Celery setting ``name`` (None: not such a name)."""
    return GAPS.get(name)
