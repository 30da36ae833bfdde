#!/bin/sh
# One PostgreSQL server, one database per consumer: MLflow's tracking store and registry,
# Prefect's API database, and the attnops inference log. Run by the postgres image once,
# when its data volume is empty (docker-entrypoint-initdb.d); later changes need
# `docker compose down -v` or a manual CREATE DATABASE.
set -eu
for db in ${ATTNOPS_DATABASES:-mlflow prefect inference}; do
  echo "creating database $db"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\";"
done
