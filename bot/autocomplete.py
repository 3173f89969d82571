"""Slash-command autocomplete shared by every cog that takes a service or an env."""

from __future__ import annotations

import discord
from discord import app_commands


async def services(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    names = interaction.client.app.catalog.services  # type: ignore[attr-defined]
    return [app_commands.Choice(name=s, value=s) for s in names if current.lower() in s][:25]


async def envs(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
    names = interaction.client.app.catalog.envs  # type: ignore[attr-defined]
    return [app_commands.Choice(name=e, value=e) for e in names if current.lower() in e][:25]
