"""The whitelist, the local directory of BALs, national directory publication ([directory])."""
