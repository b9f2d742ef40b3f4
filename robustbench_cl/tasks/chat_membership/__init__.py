"""Membership inference on a chat LLM's fine-tuning data (the ``chat_membership:`` section)."""

from robustbench_cl.tasks.chat_membership.task import ChatMembershipTask

__all__ = ["ChatMembershipTask"]
