#!/usr/bin/env bash
# The seed's curl calls against a GemmaDeployment's OpenAI endpoint: list the models, a completion, a chat.
#
#   OPENAI_BASE_URL=http://127.0.0.1:8000/v1 ./curl_examples.sh
#
# OPENAI_BASE_URL defaults to the in-cluster URL of the repo's gemma.yaml; OPENAI_API_KEY (default "EMPTY")
# is sent as a bearer token (a server without an API key ignores it); OPENAI_MODEL defaults to Gemma3-4b.
# Each response is printed as one JSON line; any HTTP error makes the script fail (with the error body).
set -euo pipefail

BASE_URL="${OPENAI_BASE_URL:-http://gemma.default.svc.cluster.local:8000/v1}"
BASE_URL="${BASE_URL%/}"
API_KEY="${OPENAI_API_KEY:-EMPTY}"
MODEL="${OPENAI_MODEL:-Gemma3-4b}"

call() {  # call METHOD PATH [JSON BODY]
  local args=(-sS --fail-with-body --max-time "${CURL_MAX_TIME:-60}" -X "$1" "$BASE_URL$2"
              -H "Authorization: Bearer $API_KEY")
  [[ $# -ge 3 ]] && args+=(-H "Content-Type: application/json" -d "$3")
  echo "# $1 $BASE_URL$2" >&2
  curl "${args[@]}"
  echo
}

call GET /models

call POST /completions "{
  \"model\": \"$MODEL\",
  \"prompt\": \"San Francisco is a\",
  \"max_tokens\": 7,
  \"temperature\": 0
}"

call POST /chat/completions "{
  \"model\": \"$MODEL\",
  \"messages\": [
    {\"role\": \"system\", \"content\": \"You are a helpful assistant.\"},
    {\"role\": \"user\", \"content\": \"Tell me something about large language models.\"}
  ],
  \"max_tokens\": 64
}"
