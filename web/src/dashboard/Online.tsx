/** "Online now": every user connected anywhere in the fleet, the signed-in user's entry marked. */

import type { PresentUser, UserId } from "../events";
import type { Translate } from "./i18n";

export function Online(props: { users: PresentUser[]; selfId: UserId | null; t: Translate }) {
  const { users, selfId, t } = props;
  return (
    <section className="panel online" aria-labelledby="online-heading">
      <div className="panel-head">
        <h2 id="online-heading">{t("online.title", { count: users.length })}</h2>
      </div>
      {users.length === 0 ? (
        <p className="muted">{t("online.empty")}</p>
      ) : (
        <ul className="online-list" data-testid="online">
          {users.map((user) => {
            const self = selfId !== null && String(user.userId) === String(selfId);
            return (
              <li key={String(user.userId)} data-user-id={String(user.userId)} data-self={self ? "true" : undefined}>
                {/* dir="auto": an Arabic name reads right to left whatever the page's direction. */}
                <bdi dir="auto" className="online-name">
                  {user.userName || String(user.userId)}
                </bdi>
                {self && <span className="online-self"> ({t("online.you")})</span>}
              </li>
            );
          })}
        </ul>
      )}
    </section>
  );
}
