"""Django settings, all from the environment with embedded defaults for one machine.

Variables: DATABASE_URL, RADTRACK_DATA_DIR, CELERY_BROKER_URL, DJANGO_SECRET_KEY,
DJANGO_DEBUG, DJANGO_ALLOWED_HOSTS, RADTRACK_DEVICE, RADTRACK_MAX_UPLOAD_MB,
ingest: RADTRACK_ZIP_MAX_RATIO (and _MAX_EXPANDED_MB, _MAX_ENTRIES), RADTRACK_MAX_DECODED_MB,
RADTRACK_INGEST_STALE_MINUTES, RADTRACK_DICOM_ARTIM_S (and _IDLE_S, _MAX_ASSOCIATIONS,
_MAX_PER_ADDRESS);
RADTRACK_FHIR_SERVER_URL (and _TOKEN, RADTRACK_FHIR_PUSH_TIMEOUT_S, _ATTEMPTS);
RADTRACK_MRN_SYSTEM; RADTRACK_RECIST_CONFIRMATION_DAYS, RADTRACK_RECIST_MIN_SD_DAYS,
RADTRACK_RECIST_REQUIRE_CONFIRMATION; RADTRACK_HL7_HOST (and _PORT, _TIMEOUT_S, _ATTEMPTS, _INTERVAL_S,
_SENDING_FACILITY, _RECEIVING_APPLICATION, _RECEIVING_FACILITY);
security: RADTRACK_SESSION_IDLE_MINUTES, RADTRACK_LOGIN_FAILURE_LIMIT,
RADTRACK_LOGIN_LOCKOUT_MINUTES, RADTRACK_API_AUTH_FAILURE_LIMIT (and _WINDOW_S),
RADTRACK_CACHE_URL, RADTRACK_CONTENT_SECURITY_POLICY;
serving and workers (docs/deploy.md): RADTRACK_HTTPS (and RADTRACK_HSTS_SECONDS,
_INCLUDE_SUBDOMAINS, _PRELOAD), RADTRACK_GPU_QUEUE, RADTRACK_TASK_TIME_LIMIT_S,
RADTRACK_BROKER_VISIBILITY_TIMEOUT_S, RADTRACK_BROKER_KEY_PREFIX,
RADTRACK_QUEUED_RESEND_INTERVAL_S;
segmentation models (imaging.modelhub): RADTRACK_VALIDATION_SET, RADTRACK_MODEL_MARGINS (JSON),
RADTRACK_DRIFT_WINDOW, RADTRACK_DRIFT_MIN_REFERENCE, RADTRACK_DRIFT_ALPHA.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DATA_DIR = Path(os.environ.get("RADTRACK_DATA_DIR", BASE_DIR / "var")).resolve()


def _private_dir(path: Path) -> None:
    """Create ``path`` readable by this account alone (0700): it holds patient data."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


def _private_file(path: Path) -> None:
    """Create ``path`` if missing, and make it readable and writable by this account alone."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    path.chmod(0o600)


DEBUG = _env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    # Embedded mode: a per-installation key kept in the data folder, never a constant.
    _key_file = DATA_DIR / "secret_key"
    if _key_file.exists():
        SECRET_KEY = _key_file.read_text().strip()
    else:
        import secrets

        _private_dir(DATA_DIR)
        SECRET_KEY = secrets.token_urlsafe(50)
        _private_file(_key_file)
        _key_file.write_text(SECRET_KEY)

ALLOWED_HOSTS = [
    h.strip()
    for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,testserver").split(",")
    if h.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    # Before staticfiles: runserver serves static files through WhiteNoise, as gunicorn does.
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    "patients",
    "imaging",
    "imaging.modelhub",
    "analytics",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files, straight after security
    "radtrack.middleware.QueryParameterMiddleware",
    "radtrack.middleware.SecurityHeadersMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "radtrack.middleware.SessionActivityMiddleware",  # the idle timeout (needs the session)
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into its page (axes' rule)
]

ROOT_URLCONF = "radtrack.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "radtrack.wsgi.application"

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{DATA_DIR / 'radtrack.sqlite3'}",
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while an import writes.
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].setdefault(
        "init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
    DATABASES["default"]["OPTIONS"].setdefault("timeout", 30)
    DATABASES["default"]["OPTIONS"].setdefault("transaction_mode", "IMMEDIATE")
    # The file holds patient data, password hashes and token digests: 0600 in a 0700
    # folder (SQLite gives its -wal and -shm files the database file's mode).
    _sqlite_name = str(DATABASES["default"].get("NAME") or "")
    if _sqlite_name and _sqlite_name != ":memory:" and not _sqlite_name.startswith("file:"):
        _sqlite_path = Path(_sqlite_name).resolve()
        if _sqlite_path.parent == DATA_DIR:  # a folder named elsewhere is the operator's
            _private_dir(DATA_DIR)
        if _sqlite_path.parent.is_dir():
            _private_file(_sqlite_path)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# -- logins: django-axes locks an account, or an address, out after too many failures ---
AUTHENTICATION_BACKENDS = [
    "radtrack.auth.LoginThrottleBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("RADTRACK_LOGIN_FAILURE_LIMIT", "5"))
# Per account and, separately, per address: either alone locks out (per account alone
# when the address is unknown: radtrack.auth.lockout_parameters).
AXES_LOCKOUT_PARAMETERS = "radtrack.auth.lockout_parameters"
# Minutes a lockout lasts; 0 keeps it until an administrator lifts it (admin site,
# "Access attempts", or `manage.py login_unlock`; both audited).
_lockout_minutes = float(os.environ.get("RADTRACK_LOGIN_LOCKOUT_MINUTES", "15"))
AXES_COOLOFF_TIME = _lockout_minutes / 60 if _lockout_minutes > 0 else None
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "radtrack.addresses.client_address"  # None when unknown
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429
AXES_ENABLE_ADMIN = False  # patients.admin registers its own, audited, lockout admin
AXES_VERBOSE = False  # its log lines name the username and address

# -- sessions: end after RADTRACK_SESSION_IDLE_MINUTES without a request, and with the browser
SESSION_COOKIE_AGE = int(float(os.environ.get("RADTRACK_SESSION_IDLE_MINUTES", "30")) * 60)
# A request restarts the idle time (radtrack.middleware.SessionActivityMiddleware, at most
# once a minute, rather than SESSION_SAVE_EVERY_REQUEST's write on every request).
SESSION_EXPIRE_AT_BROWSER_CLOSE = True

# -- caches: the API's failed-authentication counts (per process unless shared) ----------
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache",
         "LOCATION": os.environ["RADTRACK_CACHE_URL"]}
        if os.environ.get("RADTRACK_CACHE_URL")
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}  # fmt: skip
RADTRACK_API_AUTH_FAILURE_LIMIT = int(os.environ.get("RADTRACK_API_AUTH_FAILURE_LIMIT", "10"))
RADTRACK_API_AUTH_FAILURE_WINDOW_S = int(
    os.environ.get("RADTRACK_API_AUTH_FAILURE_WINDOW_S", "300")
)

# -- Content-Security-Policy (radtrack.middleware): scripts only from this server's files
# (no inline script, no eval: Plotly and NiiVue run without either, checked in Chromium by
# the browser tests); styles may be inline, as Plotly writes them; images from data: and
# blob: URLs (Plotly's and NiiVue's own drawings). Framing as X_FRAME_OPTIONS says (below):
# by this site's own pages over plain HTTP (SAMEORIGIN), by none over HTTPS (DENY); the two
# must agree, since browsers that read frame-ancestors ignore X-Frame-Options.
_FRAME_ANCESTORS = "'none'" if _env_bool("RADTRACK_HTTPS", False) else "'self'"
RADTRACK_CONTENT_SECURITY_POLICY = os.environ.get(
    "RADTRACK_CONTENT_SECURITY_POLICY",
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; "
    f"frame-ancestors {_FRAME_ANCESTORS}",
)

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "analytics:worklist"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = os.environ.get("TZ_NAME", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "radtrack" / "static"]
STATIC_ROOT = DATA_DIR / "static"
# Static files are served by WhiteNoise from STATIC_ROOT (`manage.py collectstatic`, which
# every serving command runs first): names carry a content hash and are cached for a year,
# with gzip copies beside them. The default storage is the operator's (the image store
# keeps its own folders under RADTRACK_DATA_DIR).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
# The image store (imaging.store; docs/deploy.md, "The image store"): "filesystem" keeps
# originals, volumes and masks under RADTRACK_DATA_DIR (a shared filesystem when several
# machines work); "s3" keeps them in an S3-compatible bucket through django-storages
# (boto3), credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the machine's role.
RADTRACK_STORE = os.environ.get("RADTRACK_STORE", "filesystem").strip().lower()
if RADTRACK_STORE == "s3":
    if not os.environ.get("RADTRACK_S3_BUCKET"):
        raise ImproperlyConfigured("RADTRACK_STORE=s3 needs RADTRACK_S3_BUCKET (the bucket name)")
    STORAGES["images"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": os.environ["RADTRACK_S3_BUCKET"],
            "location": os.environ.get("RADTRACK_S3_PREFIX", "").strip("/"),
            "endpoint_url": os.environ.get("RADTRACK_S3_ENDPOINT_URL") or None,
            "region_name": os.environ.get("RADTRACK_S3_REGION") or None,
            "addressing_style": os.environ.get("RADTRACK_S3_ADDRESSING_STYLE") or None,
            "default_acl": None,
            "file_overwrite": True,
        },
    }
elif RADTRACK_STORE != "filesystem":
    raise ImproperlyConfigured(f"RADTRACK_STORE must be filesystem or s3, not {RADTRACK_STORE!r}")


def _env_json(name: str):
    """A JSON setting from the environment (None when unset)."""
    import json

    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f"{name} is not valid JSON: {exc}") from None


# Segmentation models (imaging.modelhub): the locked validation set's definition (unset: the
# shipped one, imaging.core.modelhub.validation_set), the promotion margins (e.g.
# {"sensitivity_points": 1, "fp_per_study": 0.2, "volume_error_points": 2}), and the drift
# checks' window (studies), the fewest reference values a test runs on (below it the
# drift page says "not tested" with the reason) and significance (before the Bonferroni
# correction).
RADTRACK_VALIDATION_SET = _env_json("RADTRACK_VALIDATION_SET")
RADTRACK_MODEL_MARGINS = _env_json("RADTRACK_MODEL_MARGINS")
RADTRACK_DRIFT_WINDOW = int(os.environ.get("RADTRACK_DRIFT_WINDOW", "10"))
RADTRACK_DRIFT_MIN_REFERENCE = int(os.environ.get("RADTRACK_DRIFT_MIN_REFERENCE", "5"))
RADTRACK_DRIFT_ALPHA = float(os.environ.get("RADTRACK_DRIFT_ALPHA", "0.01"))

# Uploads: files larger than this are refused with a clear message.
RADTRACK_MAX_UPLOAD_BYTES = int(float(os.environ.get("RADTRACK_MAX_UPLOAD_MB", "1024")) * 2**20)
# Expansion bounds (imaging.ingest.archive, imaging.core.dicom.inspect): a zip entry may
# expand at most RADTRACK_ZIP_MAX_RATIO times its compressed size (judged past 16 MB),
# the archives of one upload to RADTRACK_ZIP_MAX_EXPANDED_MB in all, an archive may list
# RADTRACK_ZIP_MAX_ENTRIES entries, and one instance's pixels (or deflated data set) may
# decode to RADTRACK_MAX_DECODED_MB.
RADTRACK_ZIP_MAX_RATIO = float(os.environ.get("RADTRACK_ZIP_MAX_RATIO", "100"))
RADTRACK_ZIP_MAX_EXPANDED_BYTES = int(
    float(os.environ.get("RADTRACK_ZIP_MAX_EXPANDED_MB", "8192")) * 2**20
)
RADTRACK_ZIP_MAX_ENTRIES = int(os.environ.get("RADTRACK_ZIP_MAX_ENTRIES", "100000"))
RADTRACK_MAX_DECODED_BYTES = int(float(os.environ.get("RADTRACK_MAX_DECODED_MB", "512")) * 2**20)
# An ingest session still "running" whose process has died (same host), or that has
# shown no progress for this long, is marked failed (imaging.ingest.sessions).
RADTRACK_INGEST_STALE_MINUTES = float(os.environ.get("RADTRACK_INGEST_STALE_MINUTES", "60"))
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 2**20
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 2**20
DATA_UPLOAD_MAX_NUMBER_FILES = 5000

RADTRACK_DEVICE = os.environ.get("RADTRACK_DEVICE", "auto")
# Registration of follow-ups to the baseline: "simpleitk" (CPU) or "torch" (CUDA when seen).
RADTRACK_REGISTRATION_BACKEND = os.environ.get("RADTRACK_REGISTRATION_BACKEND", "simpleitk")
# Best overall response (RECIST 1.1 sections 4.4.3 and 4.6): CR and PR confirmed at least
# this many days later; stable disease counts from this many days after baseline (the
# guideline says "in general not less than 6-8 weeks": 42 days, the lower end, unless a
# protocol says otherwise); confirmation may be switched off for a randomised trial.
RADTRACK_RECIST_CONFIRMATION_DAYS = int(os.environ.get("RADTRACK_RECIST_CONFIRMATION_DAYS", "28"))
RADTRACK_RECIST_MIN_SD_DAYS = int(os.environ.get("RADTRACK_RECIST_MIN_SD_DAYS", "42"))
RADTRACK_RECIST_REQUIRE_CONFIRMATION = _env_bool("RADTRACK_RECIST_REQUIRE_CONFIRMATION", True)

# Celery: eager in-process unless a broker is configured.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TIMEZONE = TIME_ZONE
# Queues (docs/deploy.md): `ingest` (PACS pulls and retrievals), `cpu` (bookkeeping, risk
# scores), `gpu` (pipeline runs: segmentation, torch registration), `export` (DICOM SEG
# and SR out). A worker started without --queues takes all four. Pipeline runs go to
# RADTRACK_GPU_QUEUE: `cpu` (the default) where no worker has a GPU, so nothing waits on a
# queue no one reads; `gpu` where a GPU worker takes them (radtrack.celery.task_route).
RADTRACK_TASK_QUEUES = ("ingest", "cpu", "gpu", "export")
CELERY_TASK_QUEUES = [Queue(name, routing_key=name) for name in RADTRACK_TASK_QUEUES]
RADTRACK_GPU_QUEUE = os.environ.get("RADTRACK_GPU_QUEUE", "cpu").strip().lower()
if RADTRACK_GPU_QUEUE not in {"cpu", "gpu"}:
    raise ImproperlyConfigured(f"RADTRACK_GPU_QUEUE must be cpu or gpu, not {RADTRACK_GPU_QUEUE!r}")
# A task still running after RADTRACK_TASK_TIME_LIMIT_S is stopped: the soft limit fails
# its run with the reason, the hard one a minute later ends the process. A message taken
# but not acknowledged goes back to the queue after the visibility timeout, which must
# outlast the hard limit so that a live task is never handed to a second worker (a
# full-size study's longest step, segmentation, takes about 25 s on 2 CPU cores).
RADTRACK_TASK_TIME_LIMIT_S = int(os.environ.get("RADTRACK_TASK_TIME_LIMIT_S", "3600"))
CELERY_TASK_SOFT_TIME_LIMIT = RADTRACK_TASK_TIME_LIMIT_S
CELERY_TASK_TIME_LIMIT = RADTRACK_TASK_TIME_LIMIT_S + 60
RADTRACK_BROKER_VISIBILITY_TIMEOUT_S = int(
    os.environ.get("RADTRACK_BROKER_VISIBILITY_TIMEOUT_S", str(2 * RADTRACK_TASK_TIME_LIMIT_S))
)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": RADTRACK_BROKER_VISIBILITY_TIMEOUT_S,
    # Workers look for such messages every 10 s (kombu's default throttle makes only every
    # tenth look a scan of Redis, so a lost worker's study waited up to 100 s more).
    "unacked_restore_interval": 10,
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 5,
    # Several installations (or the tests) can share one Redis under their own prefix.
    "global_keyprefix": os.environ.get("RADTRACK_BROKER_KEY_PREFIX", ""),
}
# Workers wait out a broker restart (retrying for ever) and finish what they hold; a
# page that queues work tries the broker briefly, then leaves the work marked queued
# for `imaging.pipeline.tasks.queued_studies_resend_task` rather than hang the request.
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 2,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 1,
}
# Every module that defines tasks, imported when a worker starts (named, not discovered:
# tasks live in each sub-domain's package, not in one ``tasks`` module per app).
CELERY_IMPORTS = (
    "imaging.ingest.tasks",
    "imaging.pipeline.tasks",
    "imaging.exports.tasks",
    "analytics.risk.tasks",
    "analytics.hl7.tasks",
)

REST_FRAMEWORK = {
    # The token class first: unauthenticated calls get 401 with WWW-Authenticate.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "radtrack.api.authentication.DigestTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "RadTrack API",
    "DESCRIPTION": "Lesions, measurements, responses and risk from serial CT studies.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Operation ids and tags without the version: "patients_list", not "v1_patients_list".
    "SCHEMA_PATH_PREFIX": r"/api/v[0-9]+",
    # Swagger UI served from our own static files: hospital networks are often closed.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The error answers of the shared machinery (401/403/404/415/429) on every operation,
    # and FHIR's _format in place of DRF's format (radtrack.api.schema).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "radtrack.api.schema.error_responses_document",
    ],
}

# FHIR server results are pushed to (`manage.py push_fhir`); empty: pushing is off.
# The token, when set, is sent as "Authorization: Bearer <token>".
RADTRACK_FHIR_SERVER_URL = os.environ.get("RADTRACK_FHIR_SERVER_URL", "").strip().rstrip("/")
RADTRACK_FHIR_SERVER_TOKEN = os.environ.get("RADTRACK_FHIR_SERVER_TOKEN", "")
RADTRACK_FHIR_PUSH_TIMEOUT_S = float(os.environ.get("RADTRACK_FHIR_PUSH_TIMEOUT_S", "30"))
RADTRACK_FHIR_PUSH_ATTEMPTS = int(os.environ.get("RADTRACK_FHIR_PUSH_ATTEMPTS", "3"))
# The site's MRN namespace (FHIR Identifier.system): an EHR identifier is taken as the
# MRN (DICOM PatientID) only in this system; identifiers in other systems match only a
# patient already known to carry them (patients.ehr.identifiers).
RADTRACK_MRN_SYSTEM = os.environ.get(
    "RADTRACK_MRN_SYSTEM", "https://radtrack.example/fhir/sid/mrn"
).strip()
# HL7 v2 results out (`manage.py push_hl7`, analytics.hl7): ORU^R01 over MLLP to
# HOST:PORT; empty host: off. MSH-3/4 name RadTrack, MSH-5/6 the receiver.
RADTRACK_HL7_HOST = os.environ.get("RADTRACK_HL7_HOST", "").strip()
RADTRACK_HL7_PORT = int(os.environ.get("RADTRACK_HL7_PORT", "2575"))
RADTRACK_HL7_TIMEOUT_S = float(os.environ.get("RADTRACK_HL7_TIMEOUT_S", "30"))
RADTRACK_HL7_ATTEMPTS = int(os.environ.get("RADTRACK_HL7_ATTEMPTS", "3"))
RADTRACK_HL7_SENDING_FACILITY = os.environ.get("RADTRACK_HL7_SENDING_FACILITY", "RADTRACK")
RADTRACK_HL7_RECEIVING_APPLICATION = os.environ.get("RADTRACK_HL7_RECEIVING_APPLICATION", "EHR")
RADTRACK_HL7_RECEIVING_FACILITY = os.environ.get("RADTRACK_HL7_RECEIVING_FACILITY", "HOSPITAL")
RADTRACK_HL7_INTERVAL_S = float(os.environ.get("RADTRACK_HL7_INTERVAL_S", "120"))

# Calling AE titles the DICOM listener accepts; empty accepts any.
RADTRACK_DICOM_ALLOWED_AES = [
    a.strip() for a in os.environ.get("RADTRACK_DICOM_ALLOWED_AES", "").split(",") if a.strip()
]
# The listener stays open to real senders whatever else reaches its port
# (imaging.ingest.listener): a connection must send its association request within
# RADTRACK_DICOM_ARTIM_S, an association may idle RADTRACK_DICOM_IDLE_S, at most
# RADTRACK_DICOM_MAX_ASSOCIATIONS at once and RADTRACK_DICOM_MAX_PER_ADDRESS from one
# address (a new connection there displaces that address's oldest one still silent).
RADTRACK_DICOM_ARTIM_S = float(os.environ.get("RADTRACK_DICOM_ARTIM_S", "5"))
RADTRACK_DICOM_IDLE_S = float(os.environ.get("RADTRACK_DICOM_IDLE_S", "30"))
RADTRACK_DICOM_MAX_ASSOCIATIONS = int(os.environ.get("RADTRACK_DICOM_MAX_ASSOCIATIONS", "64"))
RADTRACK_DICOM_MAX_PER_ADDRESS = int(os.environ.get("RADTRACK_DICOM_MAX_PER_ADDRESS", "16"))

# Reverse proxies whose X-Forwarded-For is believed for the audit log's address.
RADTRACK_TRUSTED_PROXIES = [
    p.strip() for p in os.environ.get("RADTRACK_TRUSTED_PROXIES", "").split(",") if p.strip()
]

# Patient data never goes into logs: log messages name files, UIDs' roles and counts,
# never names, MRNs or birth dates.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("RADTRACK_LOG_LEVEL", "WARNING")},
    "loggers": {
        "pynetdicom": {"level": "WARNING"},
        # pydicom's warnings quote element values (a birth date, a name): RadTrack
        # records them per file, without values, on the ingest session instead.
        "pydicom": {"level": "ERROR"},
    },
}

SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "SAMEORIGIN"

# -- serving over HTTPS: RADTRACK_HTTPS=true behind a proxy that ends TLS and sets
# X-Forwarded-Proto (docs/deploy.md). Off by default: `make demo` is plain HTTP on
# loopback. With it, DJANGO_DEBUG=false and a real DJANGO_SECRET_KEY, `manage.py check
# --deploy` reports nothing (tests/production/test_serving.py).
RADTRACK_HTTPS = _env_bool("RADTRACK_HTTPS", False)
if RADTRACK_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # The health check answers load balancers that probe over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz/$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("RADTRACK_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("RADTRACK_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = _env_bool("RADTRACK_HSTS_PRELOAD", True)
    X_FRAME_OPTIONS = "DENY"

# The PACS RadTrack pulls studies from and sends SEG/SR to, over DICOMweb (QIDO-RS,
# WADO-RS, STOW-RS); unset: no PACS. Connection failures, timeouts and 5xx answers are
# retried RADTRACK_PACS_ATTEMPTS times, waiting RADTRACK_PACS_RETRY_WAIT_S, doubling.
RADTRACK_PACS_DICOMWEB_URL = os.environ.get("RADTRACK_PACS_DICOMWEB_URL", "").rstrip("/")
RADTRACK_PACS_USERNAME = os.environ.get("RADTRACK_PACS_USERNAME", "")
RADTRACK_PACS_PASSWORD = os.environ.get("RADTRACK_PACS_PASSWORD", "")
RADTRACK_PACS_CONNECT_TIMEOUT_S = float(os.environ.get("RADTRACK_PACS_CONNECT_TIMEOUT_S", "5"))
RADTRACK_PACS_READ_TIMEOUT_S = float(os.environ.get("RADTRACK_PACS_READ_TIMEOUT_S", "60"))
RADTRACK_PACS_ATTEMPTS = int(os.environ.get("RADTRACK_PACS_ATTEMPTS", "3"))
RADTRACK_PACS_RETRY_WAIT_S = float(os.environ.get("RADTRACK_PACS_RETRY_WAIT_S", "2"))
# The scheduled pull looks back this many days of Study Date, and runs this often.
RADTRACK_PACS_PULL_LOOKBACK_DAYS = int(os.environ.get("RADTRACK_PACS_PULL_LOOKBACK_DAYS", "2"))
RADTRACK_PACS_PULL_INTERVAL_S = float(os.environ.get("RADTRACK_PACS_PULL_INTERVAL_S", "900"))
CELERY_BEAT_SCHEDULE = {
    # Work queued while the broker was unreachable is sent again (imaging.pipeline.queue).
    "queued-resend": {
        "task": "imaging.pipeline.tasks.queued_resend_task",
        "schedule": float(os.environ.get("RADTRACK_QUEUED_RESEND_INTERVAL_S", "120")),
    },
    # Runs left running by a worker killed at the time limit, or lost, are marked failed
    # (imaging.pipeline.stale).
    "stale-runs-close": {
        "task": "imaging.pipeline.tasks.stale_runs_close_task",
        "schedule": 600.0,
    },
    # A run killed during its lesion tracking is tracked again (imaging.pipeline.stale).
    "tracking-unfinished-resume": {
        "task": "imaging.pipeline.tasks.tracking_unfinished_resume_task",
        "schedule": 600.0,
    },
    # Ingest sessions whose process died are marked failed (imaging.ingest.sessions).
    "ingest-sessions-reap": {
        "task": "imaging.ingest.tasks.ingest_sessions_reap_task",
        "schedule": 600.0,
    },
}
if RADTRACK_PACS_DICOMWEB_URL:
    CELERY_BEAT_SCHEDULE["pacs-pull"] = {
        "task": "imaging.ingest.tasks.pacs_pull_task",
        "schedule": RADTRACK_PACS_PULL_INTERVAL_S,
    }
if RADTRACK_HL7_HOST:
    # Each final response not yet accepted by the EHR goes as an ORU^R01 (analytics.hl7).
    CELERY_BEAT_SCHEDULE["hl7-results"] = {
        "task": "analytics.hl7.tasks.hl7_results_send_task",
        "schedule": RADTRACK_HL7_INTERVAL_S,
    }
