import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";
import { TOKEN_KEY } from "@/hooks/use-realtime-tasks";
import { TasksPage } from "./TasksPage";
import "./app.css";

/** Stand-in for your app's sign-in: paste a JWT (`python -m service token`). */
function SignIn(props: { onToken: (token: string) => void }) {
  return (
    <form
      onSubmit={(event) => {
        event.preventDefault();
        const token = String(new FormData(event.currentTarget).get("token") ?? "").trim();
        if (token) props.onToken(token);
      }}
    >
      <label>
        Token <textarea name="token" rows={3} dir="ltr" spellCheck={false} />
      </label>
      <button type="submit">Sign in</button>
    </form>
  );
}

function App() {
  const [token, setToken] = useState(() => sessionStorage.getItem(TOKEN_KEY));
  if (!token) {
    return (
      <SignIn
        onToken={(value) => {
          sessionStorage.setItem(TOKEN_KEY, value);
          setToken(value);
        }}
      />
    );
  }
  return <TasksPage />;
}

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
