# One image for the example project's worker, beat and dashboard (docker-compose.yml builds
# it once; every taskq service runs it with its own command).
FROM python:3.12-slim

# taskq itself, installed as users install it (no editable install, no mount),
# with the dashboard's extra for the dashboard service.
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY taskq ./taskq
RUN pip install --no-cache-dir '.[dashboard]' && rm -rf /src

# The example project; its tasks run as an unprivileged user.
WORKDIR /app
COPY examples/ ./
RUN useradd --system --no-create-home taskq
USER taskq

CMD ["taskq", "-A", "proj", "worker", "-l", "info"]
