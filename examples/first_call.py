"""A first call without browsers: an officer and a victim (two aiortc clients) through
a running ``evr serve``.

    evr user add alice --role officer          # then:
    python examples/first_call.py http://127.0.0.1:8080 alice 'the password'

It logs in, creates a consultation, opens its link as the victim's "browser" and
claims it (as the page does when the victim presses its first button), joins both sides, and prints what each side received and the server's media counters.
"""

from __future__ import annotations

import asyncio
import json
import sys

import aiohttp

from evr.client import CallClient, claim_link

ELIGIBLE = {"adult_or_carer_present": True, "offender_absent": True, "safe_location": True, "consent": True}


async def main(base: str, username: str, password: str) -> None:
    jar = lambda: aiohttp.CookieJar(unsafe=True)  # noqa: E731 - cookies for 127.0.0.1
    async with aiohttp.ClientSession(cookie_jar=jar()) as console, aiohttp.ClientSession(cookie_jar=jar()) as phone:
        login = await console.post(f"{base}/api/login", json={"username": username, "password": password})
        login.raise_for_status()
        csrf = (await login.json())["csrf_token"]
        created = await (await console.post(
            f"{base}/api/consultations", headers={"X-CSRF-Token": csrf},
            json={"cad_ref": "CAD-DEMO-1", "victim": {}, "eligibility": ELIGIBLE},
        )).json()
        print("created", created["id"], created["join_url"])

        (await phone.get(created["join_url"])).raise_for_status()  # the page: binds nothing
        # The page's first button claims the link for this browser (the binding cookie).
        if await claim_link(phone, created["join_url"]) != 200:
            sys.exit("the link could not be claimed")
        ws = base.replace("http", "ws", 1)
        victim = CallClient(phone, created["join_url"].replace("http", "ws", 1) + "/ws")
        officer = CallClient(console, f"{ws}/api/consultations/{created['id']}/ws")
        await victim.join()
        await officer.join()
        await asyncio.gather(victim.wait_media(audio=100, video=60), officer.wait_media(audio=100, video=60))
        print(f"victim received {victim.audio_packets} audio packets, {victim.video_frames} video frames")
        print(f"officer received {officer.audio_packets} audio packets, {officer.video_frames} video frames")
        detail = await (await console.get(f"{base}/api/consultations/{created['id']}")).json()
        print(json.dumps(detail["participants"], indent=2))
        await (await console.post(f"{base}/api/consultations/{created['id']}/close",
                                  headers={"X-CSRF-Token": csrf})).json()
        await victim.leave()
        await officer.leave()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3]))
