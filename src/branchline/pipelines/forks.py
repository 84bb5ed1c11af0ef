"""Pull requests from forks: code nobody here trusts yet. Its tests run without
secrets; its preview waits until someone who may write to the repository approves
its head commit (`[forge] untrusted = "require-approval"`).

On a code host that knows who may write (`ApprovalGate`, GitHub), an approval is the
`safe-to-preview` label, and the labeller's permission is asked of the host: the
payload says who added it, not whether they may. A label from anyone else is taken
off again with a comment saying why. Every new commit takes the label off, so each
commit is approved on its own. The commit status `branchline/fork-approval` says
where the pull request stands.
"""

from __future__ import annotations

from branchline import events, naming
from branchline.kit import Kit
from branchline.providers.forge import APPROVAL_LABEL, ApprovalGate, PullRequest

STATUS_CONTEXT = "branchline/fork-approval"
COMMENT_KEY = "fork-approval"


async def awaiting_approval(kit: Kit, pull: PullRequest, event: events.PullRequestChanged) -> None:
    """A fork's pull request opened or given a new commit: the old approval no longer
    counts, and its status says the preview waits for one."""
    forge = kit.forge
    if event.action == "synchronize" and isinstance(forge, ApprovalGate):
        await forge.withdraw_approval(pull.number)
    if kit.config.forge.untrusted != "require-approval":
        return  # "no-secrets": never previewed, so nothing to wait for
    if await kit.approvals.approved(pull.number, event.head_sha):
        return  # a redelivery after the approval: it stands
    await forge.set_status(
        event.head_sha, STATUS_CONTEXT, "pending", None,
        f"waiting for approval: a writer adds the {APPROVAL_LABEL} label",
    )  # fmt: skip


async def confirm(kit: Kit, pull: PullRequest, event: events.PullRequestApproved) -> None:
    """An approval of `pull`'s head commit: on a host that knows who may write, kept
    only when the approver may (else the label comes off and a comment says why);
    then the status says who approved it."""
    if pull.head_sha != event.sha or kit.trusts(pull):
        return  # an older commit's (it starts nothing), or no approval is needed
    forge = kit.forge
    who = naming.printable(event.by, 40)
    if isinstance(forge, ApprovalGate) and not await kit.approvals.approved(pull.number, event.sha):
        if not await forge.may_approve(event.by):
            await forge.withdraw_approval(pull.number)
            await forge.upsert_comment(
                pull.number, COMMENT_KEY,
                f"The `{APPROVAL_LABEL}` label added by @{who} was taken off: only people "
                "who can write to this repository may approve a preview of a fork's "
                "pull request.\n",
            )  # fmt: skip
            return
        await kit.approvals.approve(pull.number, event.sha, event.by)
    if await kit.approvals.approved(pull.number, event.sha):
        await forge.set_status(
            event.sha, STATUS_CONTEXT, "success", None, f"approved by {who} at {event.sha[:8]}"
        )
