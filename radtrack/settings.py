"""Django settings, all from the environment with embedded defaults for one machine.

Variables: DATABASE_URL, RADTRACK_DATA_DIR, CELERY_BROKER_URL, DJANGO_SECRET_KEY,
DJANGO_DEBUG, DJANGO_ALLOWED_HOSTS, RADTRACK_DEVICE, RADTRACK_MAX_UPLOAD_MB,
RADTRACK_FHIR_SERVER_URL (and _TOKEN, RADTRACK_FHIR_PUSH_TIMEOUT_S, _ATTEMPTS).
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


DATA_DIR = Path(os.environ.get("RADTRACK_DATA_DIR", BASE_DIR / "var")).resolve()

DEBUG = _env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    # Embedded mode: a per-installation key kept in the data folder, never a constant.
    _key_file = DATA_DIR / "secret_key"
    if _key_file.exists():
        SECRET_KEY = _key_file.read_text().strip()
    else:
        import secrets

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        SECRET_KEY = secrets.token_urlsafe(50)
        _key_file.write_text(SECRET_KEY)
        _key_file.chmod(0o600)

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
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "patients",
    "imaging",
    "analytics",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

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

# Uploads: files larger than this are refused with a clear message.
RADTRACK_MAX_UPLOAD_BYTES = int(float(os.environ.get("RADTRACK_MAX_UPLOAD_MB", "1024")) * 2**20)
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 2**20
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 2**20
DATA_UPLOAD_MAX_NUMBER_FILES = 5000

RADTRACK_DEVICE = os.environ.get("RADTRACK_DEVICE", "auto")
# Registration of follow-ups to the baseline: "simpleitk" (CPU) or "torch" (CUDA when seen).
RADTRACK_REGISTRATION_BACKEND = os.environ.get("RADTRACK_REGISTRATION_BACKEND", "simpleitk")

# Celery: eager in-process unless a broker is configured.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "")
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
CELERY_TIMEZONE = TIME_ZONE
# Every module that defines tasks, imported when a worker starts (named, not discovered:
# tasks live in each sub-domain's package, not in one ``tasks`` module per app).
CELERY_IMPORTS = (
    "imaging.ingest.tasks",
    "imaging.pipeline.tasks",
    "imaging.exports.tasks",
    "analytics.risk.tasks",
)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
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
}

# FHIR server results are pushed to (`manage.py push_fhir`); empty: pushing is off.
# The token, when set, is sent as "Authorization: Bearer <token>".
RADTRACK_FHIR_SERVER_URL = os.environ.get("RADTRACK_FHIR_SERVER_URL", "").strip().rstrip("/")
RADTRACK_FHIR_SERVER_TOKEN = os.environ.get("RADTRACK_FHIR_SERVER_TOKEN", "")
RADTRACK_FHIR_PUSH_TIMEOUT_S = float(os.environ.get("RADTRACK_FHIR_PUSH_TIMEOUT_S", "30"))
RADTRACK_FHIR_PUSH_ATTEMPTS = int(os.environ.get("RADTRACK_FHIR_PUSH_ATTEMPTS", "3"))

# Calling AE titles the DICOM listener accepts; empty accepts any.
RADTRACK_DICOM_ALLOWED_AES = [
    a.strip() for a in os.environ.get("RADTRACK_DICOM_ALLOWED_AES", "").split(",") if a.strip()
]

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
CELERY_BEAT_SCHEDULE = {}
if RADTRACK_PACS_DICOMWEB_URL:
    CELERY_BEAT_SCHEDULE["pacs-pull"] = {
        "task": "imaging.ingest.tasks.pacs_pull_task",
        "schedule": RADTRACK_PACS_PULL_INTERVAL_S,
    }
