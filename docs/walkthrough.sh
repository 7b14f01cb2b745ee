#!/usr/bin/env bash
# The README's CLI walkthrough ("The first hour"), as a script that runs:
#
#     docs/walkthrough.sh http://127.0.0.1:8000 "$(cat ~/.modelport/admin.key)" [WORKDIR]
#
# against a running server, with the platform admin's key. tests/cli/test_walkthrough.py runs it
# against a live server on every `make test`, and checks that the block between the two markers
# below is, line for line, the one in README.md, so that the README cannot rot.
# It creates the user `alice`, the workspace `research` and the deployment `assistant`: run it
# on a fresh installation, not on one you care about.
set -euo pipefail
export MODELPORT_URL="${1:?usage: $0 URL ADMIN_KEY [WORKDIR]}" MODELPORT_API_KEY="${2:?usage: $0 URL ADMIN_KEY [WORKDIR]}"
cd "${3:-$(mktemp -d)}"

# --- walkthrough: begin ---
# As the platform admin: its key is MODELPORT_API_KEY, or the admin.key of a server on this machine.
ADMIN_KEY=${MODELPORT_API_KEY:-$(cat "${MODELPORT_HOME:-$HOME/.modelport}/admin.key")}
modelport users create alice --email alice@example.org
modelport users create bob
modelport workspaces create research --owner alice --description "Applied research"
# alice's first API key: the admin mints it without joining the workspace (audited there)
ALICE_KEY=$(modelport apikeys create --user alice --workspace research --name laptop)

# As alice, owner of research (her key is shown once; keep it in a password manager):
export MODELPORT_API_KEY=$ALICE_KEY
modelport status
modelport workspaces add-member bob --role contributor
modelport --api-key "$ADMIN_KEY" apikeys create --user bob --workspace research --name bob-laptop > bob.key   # keys for others: admins only
modelport apikeys list                                         # owners: every key of the workspace
modelport workspaces members
modelport models list
modelport models show SmolLM2-135M-Instruct                    # the card, files, sha256, scan
modelport models download SmolLM2-135M-Instruct -o smollm2.gguf   # sha256 verified
modelport models import smollm2.gguf --name my-model --license Apache-2.0
modelport deployments create assistant --model SmolLM2-135M-Instruct --type dedicated --instances 2
modelport deployments list
curl -sS --fail-with-body "${MODELPORT_URL:-http://127.0.0.1:8000}/v1/chat/completions" -H "Authorization: Bearer $ALICE_KEY" \
  -H 'Content-Type: application/json' \
  -d '{"model": "assistant", "messages": [{"role": "user", "content": "Say hello in French."}], "max_tokens": 16}'
modelport deployments regenerate-key assistant --which secondary
modelport deployments usage assistant
modelport audit

# Training data and keys (encrypted twice at rest: workspace key + platform key)
printf '%s\n' '{"messages": [{"role": "user", "content": "Opening hours?"}, {"role": "assistant", "content": "9 to 5."}]}' \
  '{"messages": [{"role": "user", "content": "Phone?"}, {"role": "assistant", "content": "+1 555 0100."}]}' > faq.jsonl
modelport datasets upload faq.jsonl --name support-faq       # validated and encrypted while it streams
modelport cmk register                                       # a customer-managed key (local keystore)
# or one in AWS KMS, tagged for this workspace (below): modelport cmk register --provider aws --key-ref arn:aws:kms:...
modelport workspace-key rotate && modelport workspace-key rewrap
JOB=$(modelport finetune create --model SmolLM2-135M-Instruct --dataset support-faq --epochs 3 --suffix faq)
modelport finetune show "$JOB"                               # --follow watches it train (minutes)
modelport finetune cancel "$JOB"                             # or let it finish and deploy SmolLM2-135M-Instruct-ft-faq

# Content safety
echo "How do I bake sourdough bread?" | modelport safety check   # text from stdin, never the command line
modelport safety filter assistant --threshold high --streaming asynchronous
printf '%s\n' '{"terms": ["project falcon"], "patterns": []}' > terms.json
modelport safety blocklists put internal --file terms.json
modelport safety counts assistant                            # counts only, never content

# Governance: the platform admin forbids public endpoints in Cedar (starter policies: the repository's policies/)
printf '%s\n' 'forbid(principal, action in [Action::"deploy", Action::"update_deployment"], resource)' \
  'when { resource.public_network_access };' > no-public.cedar
modelport --api-key "$ADMIN_KEY" policies put no-public-network --file no-public.cedar --scope platform
modelport policies test --action deploy --model SmolLM2-135M-Instruct || echo "denied, as expected"   # exit 3
modelport policies compliance                                # assistant is public: listed, left running
modelport --api-key "$ADMIN_KEY" policies delete no-public-network --scope platform --yes

# Clean up, then the platform admin rotates the platform key
modelport datasets delete support-faq --yes                  # destroys the data keys
modelport deployments delete assistant --yes
modelport --api-key "$ADMIN_KEY" platform-key rotate
modelport --api-key "$ADMIN_KEY" platform-key rewrap
# --- walkthrough: end ---
