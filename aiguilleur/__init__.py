"""The aiguilleur: v1 to v2 mailbox placement, proxying and migration (to come)."""
